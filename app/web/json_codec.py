"""JSON for every response (GraphQL over HTTP and WebSocket, /readyz, /v1/embeddings): orjson.

orjson writes the same text as `json.dumps(..., separators=(",", ":"))` for what we send (str keys,
finite floats in shortest round-trip form) at a tenth of the CPU; a response with a 384-float
vector spent ~11% of a cached `embed` in json.dumps. Anything orjson refuses (integers beyond 64
bits, non-str keys of odd types) falls back to the standard library, so no response fails here.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import JSONResponse

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(data: Any) -> bytes:
    try:
        return orjson.dumps(data, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(data, separators=(",", ":"), default=str).encode()


def dumps_str(data: Any) -> str:
    """For WebSocket text frames (a bytes payload would go out as a binary frame)."""
    return dumps(data).decode()


def loads(data: str | bytes) -> Any:
    # orjson.JSONDecodeError subclasses json.JSONDecodeError: callers' error handling still holds.
    return orjson.loads(data)


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)
