#!/usr/bin/env python3
"""Set up Citadel in ./.venv and run it: the only command a newcomer needs.

    python3 bootstrap.py serve      # set up, then serve on embedded PostgreSQL, Redis, Qdrant Edge
    python3 bootstrap.py test       # set up with test tools, then run the whole test suite
    python3 bootstrap.py citadel doctor   # any `citadel` subcommand, inside the venv

Works the same on Linux, macOS, Windows (PowerShell, CMD) and WSL: no virtualenv to activate by
hand. Standard library only, because it runs before anything is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
# A CPU build of torch by default; set CITADEL_TORCH_SPEC=torch (or a CUDA index) for GPUs.
TORCH_SPEC = os.environ.get("CITADEL_TORCH_SPEC", "torch==2.13.0")
BROWSER = Path("/usr/bin/chromium")


def run(*args: str | Path) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], cwd=ROOT, check=True)


def run_foreground(*args: str | Path) -> int:
    """Run a long-lived command (the server, the tests) until it ends by itself.

    Ctrl-C in a terminal reaches the whole process group, the child included: the child then
    shuts down in its own time (the server stops its embedded databases), so this only waits.
    subprocess.run would kill it 0.25 s after the interrupt and orphan those databases."""
    print("+", " ".join(str(a) for a in args), flush=True)
    process = subprocess.Popen([str(a) for a in args], cwd=ROOT)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue


def pip(*args: str) -> None:
    # pip compiles every module to bytecode up front (not --no-compile): every later start then
    # reads it, even where PYTHONDONTWRITEBYTECODE is set (as on many CI machines and containers),
    # which would otherwise make each process compile torch and the rest from source again.
    run(PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args)


def has_module(name: str) -> bool:
    probe = f"import importlib.util,sys; sys.exit(importlib.util.find_spec('{name}') is None)"
    return subprocess.run([str(PYTHON), "-c", probe], cwd=ROOT).returncode == 0


def setup(extras: str = "") -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Citadel needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not has_module("torch"):
        # Installed first and on its own, so the project's `torch>=` range is already met and pip
        # does not pull a multi-GB CUDA build on CPU-only machines.
        pip(TORCH_SPEC)
    pip("-e", f".{extras}")


def ensure_browser() -> None:
    """Headless Chromium for the browser tests (Debian/Ubuntu, as root)."""
    if BROWSER.exists() or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        if subprocess.run(cmd, env=env).returncode != 0:
            print("could not install chromium; browser tests will say why they skip", flush=True)
            return


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("serve", [])
    if command == "serve":
        setup()
        return run_foreground(BIN / "citadel", "serve", *rest)
    if command == "test":
        setup("[test]")
        ensure_browser()
        return run_foreground(PYTHON, "-m", "pytest", *rest)
    if command == "citadel":
        setup()
        return run_foreground(BIN / "citadel", *rest)
    print(__doc__)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
