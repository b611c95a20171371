"""The configured default model downloads from a mirror that stores repos under their canonical,
case-sensitive names (as olah and other real mirrors do): the catalog must ask for exactly that."""

from __future__ import annotations

import time

from app.domain.models import builtin_catalog
from tests.e2e.conftest import ARTIFACTS, shared_redis_env
from tests.support.fake_hub import FakeHub
from tests.support.server import LiveServer

DEFAULT = "BAAI/bge-small-en-v1.5"
MODEL_STATE = "query($m: String!) { model(name: $m) { state attempts lastError } }"


def test_catalog_names_the_repo_as_the_hub_lists_it():
    assert builtin_catalog()[DEFAULT].repo_id == "Qdrant/bge-small-en-v1.5-onnx-Q"


def test_default_model_downloads_through_a_mirror_that_knows_only_canonical_names(tmp_path, onnx_dir, e2e_database):
    repo_id = builtin_catalog()[DEFAULT].repo_id
    # The mirror holds the bundled model's ONNX export under the default model's repo name, and
    # answers 404 to any other spelling of it.
    with FakeHub(source=onnx_dir, repo_id=repo_id) as mirror:
        env = {
            "CITADEL_DATA_DIR": str(tmp_path / "data"),
            "CITADEL_DATABASE_URL": e2e_database,
            **shared_redis_env(),
            "HF_ENDPOINT": mirror.url,
            "CITADEL_HF_ENDPOINT": mirror.url,
            "HF_HUB_OFFLINE": "0",
            "CITADEL_HF_OFFLINE": "false",
            "CITADEL_DOWNLOADS__RETRY_DELAY_SECONDS": "0.3",
            "CITADEL_DOWNLOADS__MIN_FREE_DISK_MB": "1",
        }
        server = LiveServer(env=env, log_path=ARTIFACTS / "default-model-download.log").start()
        try:
            deadline = time.monotonic() + 300
            while True:
                model = server.graphql(MODEL_STATE, {"m": DEFAULT})["data"]["model"]
                if model["state"] in ("READY", "FAILED") or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert model["state"] == "READY", (model, server.log_tail())
            assert model["attempts"] == 1, model
            embedded = server.graphql('{ embed(texts: ["downloaded"]) { model dimensions } }')
            assert embedded["data"]["embed"] == {"model": DEFAULT, "dimensions": 384}, embedded
        finally:
            assert server.stop() == 0
        misses = [r for r in mirror.requests if r.status == 404 and ("/api/models/" in r.path or "/resolve/" in r.path)]
        assert misses == [], misses
        assert any(r.file and r.file.endswith(".onnx") for r in mirror.requests), mirror.requests
