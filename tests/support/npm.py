"""JavaScript clients from the npm registry, installed into a test's scratch folder."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def npm_install(folder: Path, *packages: str, what: str) -> Path:
    """`npm install` of the packages into folder. The test skips, saying why, where Node.js/npm are
    not installed or the registry cannot be reached; `what` names what would have run."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip(f"Node.js/npm are not installed: {what} cannot run here")
    done = subprocess.run(
        # --prefer-offline: package metadata from npm's cache where it has them, without asking the
        # registry again for each (6 s instead of 8-16 s for graphql-codegen's tree here).
        ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefer-offline", *packages],
        cwd=folder, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"npm could not install {what} (no registry?): {done.stderr[-500:]}")
    return folder
