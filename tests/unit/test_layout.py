"""The README's "Where things are" stays true: every path it names exists, and imports run the
one way it says (graphql, grpc -> services -> inference, adapters, downloads -> domain)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A package may import what is to its right, never what is to its left.
# The transports (GraphQL, gRPC) sit side by side at the top.
LAYERS = [("app.graphql", "app.grpc"), "app.services", ("app.inference", "app.adapters", "app.downloads"), "app.domain"]


def _section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Where things are")
    return readme[start : readme.index("\n## ", start + 1)]


def test_every_path_in_the_layout_exists() -> None:
    paths = {p for p in re.findall(r"`([\w./]+)`", _section()) if "/" in p}
    assert len(paths) >= 15
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"README 'Where things are' names paths that do not exist: {missing}"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _rank(module: str) -> int | None:
    for rank, layer in enumerate(LAYERS):
        for package in layer if isinstance(layer, tuple) else (layer,):
            if module == package or module.startswith(package + "."):
                return rank
    return None


def test_imports_run_one_way() -> None:
    upward = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = _rank(module)
        if own is None:
            continue
        for imported in _imports(path):
            theirs = _rank(imported)
            if theirs is not None and theirs < own:
                upward.append(f"{module} imports {imported}")
    assert not upward, upward


# What the gRPC transport may import from the app: services (through app.services.container's
# Services), the typed requests, the domain, errors, validation, the HTTP edge's key resolution, the caller's address
# for fair shares, settings and the startup refusal. Never a repository, a store, the model pool
# or the GraphQL layer.
GRPC_MAY_IMPORT = (
    "app.grpc", "app.services", "app.requests", "app.domain", "app.errors", "app.validation", "app.web.auth", "app.web.json_codec",
    "app.inference.callers", "app.settings", "app.startup_checks",
)  # fmt: skip


def test_the_grpc_transport_reaches_only_services() -> None:
    strays = []
    for path in sorted((ROOT / "app" / "grpc").rglob("*.py")):
        for imported in _imports(path):
            if imported.startswith("app.") and not imported.startswith(GRPC_MAY_IMPORT):
                strays.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not strays, strays


def test_only_the_app_starts_the_grpc_transport() -> None:
    """The lifespan (app/main.py) serves it; no layer below a transport knows it exists."""
    users = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "app").rglob("*.py")
        if "grpc" not in path.relative_to(ROOT).parts[:2] and any(m.startswith("app.grpc") for m in _imports(path))
    )
    assert users == ["app/main.py"], users


# The typed requests sit below the services (which run them) and import nothing that does work.
REQUESTS_MAY_IMPORT = ("app.domain", "app.errors", "app.settings", "app.validation")
# Each operation's one entry for a transport: build the request (`parse`), then `run` it.
OPERATIONS = {
    "embedder.embed(": "EmbedRequest", "search.search(": "SearchRequest", "search.search_collections(": "CollectionsSearchRequest",
    "ingest.ingest(": "IngestBatch", "reranker.rerank(": "RerankRequest",
}  # fmt: skip
TRANSPORTS = ("graphql", "grpc", "web")


def test_the_typed_requests_depend_on_nothing_that_does_work() -> None:
    imported = {m for m in _imports(ROOT / "app" / "requests.py") if m.startswith("app.")}
    assert imported and all(m.startswith(REQUESTS_MAY_IMPORT) for m in imported), imported


def test_transports_run_typed_requests_only() -> None:
    """A transport never calls a service's keyword form (which parses again for callers inside the
    server): it builds the operation's request once and runs it."""
    strays = []
    for package in TRANSPORTS:
        for path in sorted((ROOT / "app" / package).rglob("*.py")):
            text = path.read_text()
            strays += [f"{path.relative_to(ROOT)} calls {call}" for call in OPERATIONS if call in text]
    assert not strays, strays
    built = "".join(p.read_text() for package in TRANSPORTS for p in (ROOT / "app" / package).rglob("*.py"))
    assert all(f"{request}.parse(" in built for request in OPERATIONS.values())


def _patched_modules(source: str, name: str) -> list[str]:
    """`imported.attribute = ...` (or setattr on it) anywhere in a file, for a name it imports."""
    tree = ast.parse(source, name)
    imported = {
        alias.asname or alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" and node.args:
            targets = [ast.Attribute(value=node.args[0], attr="?")]
        for target in targets:
            base = target
            while isinstance(base, ast.Attribute):
                base = base.value
            if target is not base and isinstance(base, ast.Name) and base.id in imported:
                found.append(f"{name}:{node.lineno}: {ast.unparse(target)}")
    return found


def test_no_module_is_patched_at_run_time() -> None:
    # A library that needs a change is subclassed or configured, where the change can be seen.
    files = sorted((ROOT / "app").rglob("*.py"))
    patched = [line for path in files for line in _patched_modules(path.read_text(), str(path.relative_to(ROOT)))]
    assert patched == []


def test_the_patch_finder_sees_each_form() -> None:
    source = """
import strawberry.http.async_base_view as view
from functools import lru_cache
from app import settings
view.parse_content_type = lru_cache(view.parse_content_type)
settings.Settings.model += 1
setattr(view, "other", None)
class Mine:
    def __init__(self):
        self.value = 1
report = Mine()
report.value = 2
setattr(report, "value", 3)
"""
    assert _patched_modules(source, "x.py") == [
        "x.py:5: view.parse_content_type",
        "x.py:6: settings.Settings.model",
        "x.py:7: view.?",
    ]
