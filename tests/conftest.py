"""Session-wide fixtures shared by every test layer."""

from __future__ import annotations

import os

import pytest

from tests.support import services

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_terminal_summary(terminalreporter) -> None:
    # Which PostgreSQL/Redis ran the tests: the machine's, or embedded ones standing in.
    for line in services.summary():
        terminalreporter.write_line(line)


def pytest_sessionfinish(session, exitstatus) -> None:
    services.stop_embedded()


@pytest.fixture(scope="session")
def reference_model():
    """A direct sentence-transformers encode of the bundled model: the ground truth for vectors."""
    from sentence_transformers import SentenceTransformer

    from app.inference.sources import local_model_dir
    from app.domain.models import FALLBACK_MODEL, builtin_catalog

    spec = builtin_catalog()[FALLBACK_MODEL]
    return SentenceTransformer(str(local_model_dir(spec)), device="cpu")
