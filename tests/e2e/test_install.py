"""What users run, proven as they run it: the README's serve command on a fresh copy of the
checkout, and a wheel built from it, installed into a fresh virtualenv and served from an
unrelated directory. Both are runtime-only installs (no test extras), so a dependency that only
the test tools happen to pull in (greenlet came through playwright) cannot hide."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ARTIFACTS
from tests.support.server import ROOT, LiveServer, processes_mentioning

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

HEALTH = "{ health { status dependencies { name ok detail } } }"
INSTALL_TIMEOUT_S = 1500  # a fresh virtualenv with torch and the model stack, on a loaded 2-core box
# pip installs without compiling every installed module to bytecode up front (about half the CPU of
# an install of torch and the model stack): Python compiles what the server imports when it first
# imports it, so what is installed and what runs are the same.
NO_BYTECODE = {"PIP_COMPILE": "false"}  # pip's --no-compile, for the pip that bootstrap.py runs
TORCH_SPEC = os.environ.get("CITADEL_TORCH_SPEC", "torch==2.13.0")


def fresh_copy(dest: Path) -> Path:
    """The files a fresh clone has (tracked, plus new files not yet ignored), nothing built."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def base_python() -> str:
    """The `python3` a user types: the interpreter this venv was made from, not the venv's."""
    return getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable


def runtime_env(data_dir: Path, **extra: str) -> dict[str, str]:
    # Offline, as the embedded defaults must be able to run; nothing from the test venv leaks in.
    return {"CITADEL_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "VIRTUAL_ENV": "", **extra}


def has_module(python: Path, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def assert_serves_like_the_readme_says(server: LiveServer) -> None:
    health = server.graphql(HEALTH)["data"]["health"]
    assert health["status"] == "ok", health
    assert {d["name"]: d["ok"] for d in health["dependencies"]} == {"postgres": True, "redis": True, "qdrant": True}, health
    ide = httpx.get(server.url + "/graphql", headers={"Accept": "text/html"}, timeout=30)
    assert ide.status_code == 200 and "graphiql" in ide.text.lower(), ide.text[:300]
    dashboard = httpx.get(server.url + "/dashboard", timeout=30)
    assert dashboard.status_code == 200, dashboard.text[:300]
    # Stored data works, so the migrations shipped with the install were applied.
    created = server.graphql('mutation { createCollection(name: "installed") { name dimensions } }')
    assert created["data"]["createCollection"] == {"name": "installed", "dimensions": 384}, created
    ingested = server.graphql('mutation { ingest(collection: "installed", documents: [{id: "a", text: "a stew for winter"}]) { inserted } }')
    assert ingested["data"]["ingest"]["inserted"] == 1, ingested
    found = server.graphql('{ search(collection: "installed", query: "winter stew") { hits { id } } }')
    assert [h["id"] for h in found["data"]["search"]["hits"]] == ["a"], found


def stop_and_check_nothing_is_left(server: LiveServer, *paths: Path) -> None:
    code = server.stop(timeout=120)
    assert code == 0, server.log_tail()
    leftovers = processes_mentioning(*paths)
    assert leftovers == [], f"left behind after Ctrl-C: {[p.info for p in leftovers]}"


def test_readme_serve_command_on_a_fresh_copy_installs_runtime_only_and_serves(tmp_path):
    checkout = fresh_copy(tmp_path / "citadel")
    data_dir = tmp_path / "data"
    server = LiveServer(
        env=runtime_env(data_dir, **NO_BYTECODE),
        command=[base_python(), "bootstrap.py", "serve"],
        cwd=checkout,
        interrupt_group=True,  # Ctrl-C in a terminal: bootstrap.py and the server both get it
        log_path=ARTIFACTS / "install-readme-serve.log",
    )
    try:
        server.start(timeout=INSTALL_TIMEOUT_S)
        venv_python = checkout / ".venv" / "bin" / "python"
        assert not has_module(venv_python, "pytest"), "the serve command must not install the test extras"
        assert not has_module(venv_python, "playwright"), "the serve command must not install the test extras"
        assert_serves_like_the_readme_says(server)
    finally:
        stop_and_check_nothing_is_left(server, data_dir, checkout)


def test_wheel_in_a_fresh_venv_serves_from_an_unrelated_directory(tmp_path):
    checkout = fresh_copy(tmp_path / "src")
    dist, venv, elsewhere, data_dir = (tmp_path / d for d in ("dist", "venv", "elsewhere", "data"))
    elsewhere.mkdir()

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(checkout)],
        check=True, timeout=INSTALL_TIMEOUT_S,
    )
    (wheel,) = dist.glob("citadel-*.whl")
    subprocess.run([base_python(), "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile"]
    subprocess.run([*pip, TORCH_SPEC], check=True, timeout=INSTALL_TIMEOUT_S)  # CPU torch first, as bootstrap.py does
    subprocess.run([*pip, str(wheel)], check=True, timeout=INSTALL_TIMEOUT_S)
    assert not has_module(python, "pytest")
    shutil.rmtree(checkout)  # nothing may be read from a source tree

    server = LiveServer(
        # A typo among the settings: ignored, but the operator is told which and what it means.
        env=runtime_env(data_dir, CITADEL_SERVR__PORT="1"),
        command=[str(venv / "bin" / "citadel"), "serve"],
        cwd=elsewhere,
        log_path=ARTIFACTS / "install-wheel-serve.log",
    )
    try:
        server.start(timeout=600)
        assert_serves_like_the_readme_says(server)
        log = server.log_path.read_text(errors="replace")
        assert "CITADEL_SERVR__PORT" in log and "did you mean CITADEL_SERVER__PORT" in log, server.log_tail()
    finally:
        stop_and_check_nothing_is_left(server, data_dir, elsewhere)
    assert list(elsewhere.iterdir()) == [], "serving wrote into the working directory"
