"""Startup checks of access and edge settings: unsafe or inconsistent ones are said out loud,
impossible ones refuse to start."""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger

from app.settings import Settings, is_loopback

MIN_ADMIN_KEY_CHARS = 32
ADMIN_CHECK_SECONDS = 15.0


class StartupRefused(RuntimeError):
    """The server would be unusable or unsafe as configured; the message says what to set."""


def warn_unsafe_settings(settings: Settings) -> None:
    host, auth = settings.server.host, settings.auth
    if not is_loopback(host) and not settings.auth_required:
        logger.warning(
            "UNSAFE: serving {} with CITADEL_AUTH__REQUIRED=false: anyone who can reach the port can "
            "read, write and delete everything",
            host,
        )
    if "*" in settings.server.cors_origins:
        logger.warning("UNSAFE: CITADEL_SERVER__CORS_ORIGINS allows every origin ('*'), WebSockets included")
    if auth.admin_key is not None and len(auth.admin_key.get_secret_value()) < MIN_ADMIN_KEY_CHARS:
        logger.warning("UNSAFE: CITADEL_AUTH__ADMIN_KEY is shorter than {} characters", MIN_ADMIN_KEY_CHARS)
    if settings.auth_required:
        logger.info("API keys are required (CITADEL_AUTH__REQUIRED)")
    if settings.largest_ingest_bytes > settings.request_body_limit:
        logger.warning(
            "CITADEL_LIMITS__MAX_DOCUMENTS_PER_INGEST, MAX_TEXT_CHARS and MAX_METADATA_BYTES allow an ingest of up "
            "to {} bytes, over CITADEL_SERVER__MAX_BODY_BYTES ({}): such calls get 413",
            settings.largest_ingest_bytes, settings.request_body_limit,
        )  # fmt: skip


async def check_admin_reachable(settings: Settings, keys_repo: Any) -> None:
    """On a non-loopback bind with keys required, someone must be able to act as ADMIN:
    CITADEL_AUTH__ADMIN_KEY, or an ADMIN key already stored (`citadel keys create`). Runs before
    any background work starts, so a refusal has nothing to stop but the connections."""
    if not settings.auth_required or is_loopback(settings.server.host) or settings.auth.admin_key is not None:
        return
    try:
        async with asyncio.timeout(ADMIN_CHECK_SECONDS):
            found = await _stored_admin(keys_repo)
    except Exception as exc:  # PostgreSQL away: the server degrades rather than refusing
        logger.warning("could not check for a stored ADMIN key ({!r}); starting anyway", exc)
        return
    if not found:
        message = (
            f"refusing to start: serving {settings.server.host} with API keys required, but no ADMIN key "
            "can be used. Set CITADEL_AUTH__ADMIN_KEY (a long random secret), or create one with "
            "`citadel keys create --name admin --scope ADMIN`, or bind 127.0.0.1 (CITADEL_SERVER__HOST)."
        )
        logger.error(message)
        raise StartupRefused(message)


async def _stored_admin(keys_repo: Any) -> bool:
    # Migrations may still be running in the background: give them a moment.
    while True:
        try:
            return await keys_repo.has_active_admin()
        except Exception as exc:
            if "api_keys" not in str(exc):
                raise
            await asyncio.sleep(0.5)
