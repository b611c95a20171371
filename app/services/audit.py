"""The audit trail: one log line per admin action (who, by key id and name; what; on what)."""

from __future__ import annotations

from loguru import logger

from app.domain.access import Principal


def audit(who: Principal, action: str, target: str) -> None:
    """The log line carries the time; `audit=True` lets a JSON log be filtered for these."""
    logger.bind(audit=True).info("audit: {} {} {}", who.label, action, target)
