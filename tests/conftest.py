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


# Modules whose tests each take a minute or more on their own: pytest-xdist may run them side by
# side. Every other module runs on one worker, in file order, so its module-scoped servers start
# once and a test may build on the one before it.
SPLIT_MODULES = frozenset({"tests/e2e/test_install.py"})

# The modules that took 30 s or more in a run, slowest first (the --durations table names their
# tests): started first, so that no worker begins one of them at the end of the run.
SLOW_FIRST = (
    "tests/e2e/test_install.py",
    "tests/e2e/test_browser.py",
    "tests/e2e/test_fuzz_schemathesis.py",
    "tests/e2e/test_jobs.py",
    "tests/e2e/test_replicas_e2e.py",
    "tests/e2e/test_downloads_e2e.py",
    "tests/e2e/test_retrieval_quality.py",
    "tests/e2e/test_codegen.py",
)


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config, items) -> None:
    first = {module: rank for rank, module in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: first.get(_module(item.nodeid), len(first)))


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduling by module (its --dist loadfile), except SPLIT_MODULES, whose
    tests are scheduled one by one; modules in collection order (--no-loadscope-reorder)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if _module(nodeid) in SPLIT_MODULES else _module(nodeid)

    return ByModule(config, log)


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
