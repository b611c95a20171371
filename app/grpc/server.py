"""The grpc.aio server beside uvicorn: same process, same event loop, same Services; started and
stopped by the app's lifespan (app/main.py) while CITADEL_GRPC__ENABLED is true."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import grpc
from grpc_reflection.v1alpha import reflection
from loguru import logger

from app.grpc.citadel.v1 import citadel_pb2 as pb
from app.grpc.citadel.v1 import citadel_pb2_grpc as pb_grpc
from app.grpc.service import CitadelService, StreamQuota
from app.settings import Settings, is_loopback
from app.startup_checks import StartupRefused

if TYPE_CHECKING:
    from app.services.container import Services

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Citadel"].full_name  # citadel.v1.Citadel
# Unary calls in flight get this long to finish at shutdown (streams are ended at once).
STOP_GRACE_SECONDS = 5.0


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def check_exposure(settings: Settings) -> None:
    """Keys are required by default only where HTTP binds beyond loopback: gRPC bound beyond
    loopback while HTTP is not would open every RPC to the network without a key. Refused unless
    CITADEL_AUTH__REQUIRED says which is meant; an explicit false is only warned about, as for HTTP."""
    host = settings.grpc.host or settings.server.host
    if is_loopback(host) or settings.auth_required:
        return
    if settings.auth.required is None:
        raise StartupRefused(
            f"refusing to start: CITADEL_GRPC__HOST={host} serves gRPC beyond loopback, but API keys are not "
            f"required (CITADEL_SERVER__HOST={settings.server.host} is loopback). Set CITADEL_AUTH__REQUIRED=true, "
            "or CITADEL_AUTH__REQUIRED=false to serve without keys knowingly."
        )
    logger.warning(
        "UNSAFE: serving gRPC on {} with CITADEL_AUTH__REQUIRED=false: anyone who can reach the port can "
        "read, write and delete everything",
        host,
    )


@asynccontextmanager
async def serving_grpc(services: Services, quota: StreamQuota) -> AsyncIterator[int | None]:
    """Serves citadel.v1.Citadel (and server reflection) while the block runs; yields the bound
    port, or None where gRPC is off. `quota`: the streams each caller may hold open, shared with
    GraphQL's subscriptions."""
    settings = services.settings
    if not settings.grpc.enabled:
        yield None
        return
    check_exposure(settings)
    # Requests as large as the largest HTTP body (an ingest at its limits), not gRPC's 4 MiB;
    # replies stay unlimited, as HTTP's are.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", settings.request_body_limit)])
    citadel = CitadelService(services, quota)
    pb_grpc.add_CitadelServicer_to_server(citadel, server)
    reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME), server)
    host = settings.grpc.host or settings.server.host
    port = server.add_insecure_port(_address(host, settings.grpc.port))  # raises when it cannot bind
    await server.start()
    logger.info("gRPC ({}) on {}", SERVICE_NAME, _address(host, port))
    try:
        yield port
    finally:
        citadel.close()  # open streams end with UNAVAILABLE
        await server.stop(STOP_GRACE_SECONDS)
        logger.info("gRPC stopped")
