"""The baseline for bench/embed.py: a plain Starlette endpoint that answers POST /graphql with a
fixed JSON body (a real Citadel `embed` response, read from $PLAIN_BODY_FILE), under uvicorn
with the same options as `citadel serve`. It parses the request and serialises the response per
request, as any JSON endpoint would, and does nothing else: the floor of a Python JSON endpoint.

    PLAIN_BODY_FILE=body.json python bench/plain_starlette.py PORT
"""

from __future__ import annotations

import json
import os
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

with open(os.environ["PLAIN_BODY_FILE"], encoding="utf-8") as handle:
    PAYLOAD = json.load(handle)


async def graphql(request: Request) -> JSONResponse:
    json.loads(await request.body())
    return JSONResponse(PAYLOAD)


async def readyz(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


app = Starlette(routes=[Route("/graphql", graphql, methods=["POST"]), Route("/readyz", readyz)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False, ws="websockets-sansio", log_level="warning")
