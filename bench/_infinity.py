"""Infinity (michaelfeil/infinity, `infinity_emb` of a virtualenv of its own) as the other server
in the head-to-head benchmarks: bench/embed.py --infinity and bench/rerank.py --infinity."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


@contextlib.contextmanager
def infinity_server(
    executable: str, model_dir: Path, served_name: str, extra_env: dict[str, str] | None = None, batch_size: int = 64
) -> Iterator[tuple[str, int, str]]:
    """Infinity serving `model_dir` on torch/CPU under `served_name` (the name Citadel serves the
    model by, so both get the same request bodies); yields its base URL, pid and that name. Its
    own defaults otherwise: no OMP_WAIT_POLICY unless extra_env sets it (the bench processes may
    have set one for themselves), access log off as ours. An embedding model serves /embeddings,
    a one-label sequence classifier /rerank (Infinity picks by the model's config.json)."""
    from tests.support.server import free_port

    port = free_port()
    process = subprocess.Popen(
        [executable, "v2", "--model-id", str(model_dir), "--engine", "torch", "--device", "cpu",
         "--batch-size", str(batch_size), "--port", str(port), "--log-level", "warning",
         "--served-model-name", served_name,
         "--no-bettertransformer"],  # BetterTransformer needs optimum; transformers uses SDPA anyway
        env={**{k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}, "HF_HUB_OFFLINE": "1",
             "INFINITY_ANONYMOUS_USAGE_STATS": "0", **(extra_env or {})},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                models = httpx.get(url + "/models", timeout=2)
                if models.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("Infinity did not start")
            time.sleep(0.5)
        yield url, process.pid, models.json()["data"][0]["id"]
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
