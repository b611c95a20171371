"""configure_logging and uvicorn_log_config: stdlib and uvicorn records end up in one loguru sink."""

from __future__ import annotations

import json
import logging
import logging.config
import sys

import pytest
import uvicorn
from loguru import logger

from app.logging_setup import ROUTED_LOGGERS, InterceptHandler, configure_logging, uvicorn_log_config


@pytest.fixture(autouse=True)
def restore_logging():
    """Leave stdlib logging and loguru as this test found them."""
    names = [*ROUTED_LOGGERS, ""]
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names}
    yield
    # Back to loguru's own default: one sink on stderr (looked up at write time, since
    # capsys swaps sys.stderr per test).
    logger.remove()
    logger.add(lambda message: sys.stderr.write(message))
    for name, (handlers, level, propagate) in saved.items():
        named = logging.getLogger(name)
        named.handlers, named.propagate = handlers, propagate
        named.setLevel(level)


def test_stdlib_records_reach_loguru_with_their_level(capsys):
    configure_logging("INFO")
    logging.getLogger("uvicorn.error").info("server started on port %d", 8000)
    logging.getLogger("sentence_transformers").debug("below the level")
    err = capsys.readouterr().err
    assert "server started on port 8000" in err
    assert "INFO" in err
    assert "below the level" not in err


def test_per_statement_and_per_request_chatter_is_kept_out_but_warnings_are_not(capsys):
    configure_logging("INFO")
    logging.getLogger("sqlalchemy.engine.Engine").info("CREATE TABLE noise-1")
    logging.getLogger("httpx").info("HTTP Request: GET noise-2")
    logging.getLogger("sqlalchemy.engine.Engine").warning("a real problem")
    err = capsys.readouterr().err
    assert "noise-1" not in err and "noise-2" not in err
    assert "a real problem" in err


def test_configuring_twice_keeps_one_sink_and_one_root_handler(capsys):
    configure_logging("INFO")
    configure_logging("INFO")
    logging.getLogger("alembic").warning("only once please")
    logger.info("loguru direct")
    err = capsys.readouterr().err
    assert err.count("only once please") == 1
    assert err.count("loguru direct") == 1
    root_handlers = logging.getLogger().handlers
    assert len(root_handlers) == 1 and isinstance(root_handlers[0], InterceptHandler)


def test_json_lines_carry_message_level_and_stdlib_logger_name(capsys):
    configure_logging("DEBUG", json=True)
    logging.getLogger("httpx").warning("GET %s -> %d", "/x", 503)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    records = [line["record"] for line in lines if line["record"]["message"] == "GET /x -> 503"]
    assert len(records) == 1
    assert records[0]["level"]["name"] == "WARNING"
    assert records[0]["extra"]["logger_name"] == "httpx"
    # Reported from this test, not from the handler or the logging module.
    assert records[0]["function"] == "test_json_lines_carry_message_level_and_stdlib_logger_name"


def test_level_is_honoured_for_both_loguru_and_stdlib(capsys):
    configure_logging("WARNING")
    logger.info("loguru info")
    logging.getLogger("asyncio").info("stdlib info")
    logging.getLogger("asyncio").error("stdlib error")
    err = capsys.readouterr().err
    assert "loguru info" not in err and "stdlib info" not in err
    assert "stdlib error" in err


def _fail_with_a_secret_in_scope() -> None:
    token = "-".join(["tok", "9f3a7c"])  # built at run time so the source line does not show it
    raise RuntimeError(f"boom ({len(token)} chars)")


def test_exceptions_keep_their_traceback_but_not_local_values(capsys):
    configure_logging("INFO")
    try:
        _fail_with_a_secret_in_scope()
    except RuntimeError:
        logging.getLogger("uvicorn.error").exception("request failed")
    err = capsys.readouterr().err
    assert "request failed" in err
    assert "Traceback" in err and "RuntimeError: boom (10 chars)" in err
    assert "tok-9f3a7c" not in err


def test_library_handlers_are_replaced_by_propagation(capsys):
    noisy = logging.getLogger("qdrant_client")
    noisy.addHandler(logging.StreamHandler(sys.stderr))
    noisy.propagate = False
    configure_logging("INFO")
    noisy.info("collection created")
    err = capsys.readouterr().err
    assert err.count("collection created") == 1
    assert noisy.handlers == [] and noisy.propagate


def test_uvicorn_log_config_routes_uvicorn_loggers_once(capsys):
    configure_logging("INFO")
    # uvicorn.Config applies log_config in its constructor, exactly as uvicorn.run does.
    uvicorn.Config("app.main:create_app", log_config=uvicorn_log_config(), log_level="info")
    for name in ("uvicorn", "uvicorn.access"):
        handlers = logging.getLogger(name).handlers
        assert [type(h) for h in handlers] == [InterceptHandler], name
    assert not any(type(h) is logging.StreamHandler for h in logging.getLogger("uvicorn.error").handlers)
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/healthz", "1.1", 200)
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    err = capsys.readouterr().err
    assert err.count('"GET /healthz HTTP/1.1" 200') == 1
    assert err.count("Application startup complete.") == 1


def test_uvicorn_log_config_is_valid_without_configure_logging():
    logging.config.dictConfig(uvicorn_log_config())
    assert logging.getLogger("uvicorn.access").propagate is False
    assert any(isinstance(h, InterceptHandler) for h in logging.getLogger("uvicorn").handlers)
