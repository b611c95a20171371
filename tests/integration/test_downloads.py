"""The hub client and the cache against a real HTTP server speaking the hub protocol, with faults."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from app.cli_models import models_app
from app.downloads.cache import MANIFEST, ModelCache
from app.downloads.errors import (
    RepoNotFound,
    CacheNotWritable,
    HubHTTPError,
    HubUnreachable,
    InsufficientDisk,
    IntegrityError,
    OfflineMode,
    TruncatedFile,
)
from app.downloads.fetch import fetch_model
from app.downloads.hub import HubClient
from app.settings import ModelSpec
from tests.support.fake_hub import (  # noqa: F401  (fixtures: hub, fresh_hub)
    DEFAULT_REPO,
    HUB_MODEL,
    SMALL_FILES,
    FakeHub,
    fresh_hub,
    hub,
    unused_port,
)


@pytest.fixture
async def client(hub: FakeHub) -> HubClient:
    hub_client = HubClient(hub.url, timeout=2.0)
    yield hub_client
    await hub_client.aclose()


def spec(files: list[str] | None = None) -> ModelSpec:
    return ModelSpec(name="test/model", repo_id=DEFAULT_REPO, files=files or [], dimensions=384)


async def fetch(cache: ModelCache, client: HubClient, files: list[str] | None = None, **kwargs: object):
    return await fetch_model(spec(files), cache, client, min_free_disk_mb=1, **kwargs)  # type: ignore[arg-type]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- listing ----------------------------------------------------------------------------------


async def test_listing_has_sizes_hashes_and_the_commit(hub: FakeHub, client: HubClient) -> None:
    snapshot = await client.snapshot(DEFAULT_REPO, "main")
    assert snapshot.commit == hub.commit
    files = {f.name: f for f in snapshot.files}
    assert set(files) == set(hub.files)
    weights = files["model.safetensors"]
    assert (weights.size, weights.sha256) == (
        len(hub.files["model.safetensors"].data),
        hub.files["model.safetensors"].sha256,
    )
    assert files["vocab.txt"].blob_id == hub.files["vocab.txt"].blob_id and files["vocab.txt"].sha256 is None
    assert snapshot.total_bytes == hub.size_of()


async def test_listing_is_filtered_by_the_spec_globs(client: HubClient) -> None:
    snapshot = await client.snapshot(DEFAULT_REPO, "main", ["*.json", "vocab.txt"])
    names = {f.name for f in snapshot.files}
    assert "vocab.txt" in names and "tokenizer.json" in names and "1_Pooling/config.json" in names
    assert "model.safetensors" not in names and "README.md" not in names


async def test_a_mirror_without_blob_metadata_is_completed_with_head_requests(tmp_path: Path) -> None:
    with FakeHub(listing_blobs=False) as bare:
        bare_client = HubClient(bare.url, timeout=2.0)
        try:
            snapshot = await bare_client.snapshot(DEFAULT_REPO, "main", ["*.safetensors", "vocab.txt"])
        finally:
            await bare_client.aclose()
        files = {f.name: f for f in snapshot.files}
        # The LFS file answers HEAD with a redirect carrying X-Linked-Size / X-Linked-Etag.
        assert files["model.safetensors"].size == len(bare.files["model.safetensors"].data)
        assert files["model.safetensors"].sha256 == bare.files["model.safetensors"].sha256
        assert files["vocab.txt"].blob_id == bare.files["vocab.txt"].blob_id
        assert {r.method for r in bare.requests if r.file} == {"HEAD"}


async def test_unknown_repo_is_not_retryable(client: HubClient) -> None:
    with pytest.raises(HubHTTPError) as caught:
        await client.snapshot("nobody/nothing", "main")
    assert caught.value.status == 404 and not caught.value.retryable


async def test_a_repo_name_in_the_wrong_case_says_which_endpoint_which_repo_and_what_to_check(
    hub: FakeHub, client: HubClient
) -> None:
    wrong_case = DEFAULT_REPO.swapcase()
    with pytest.raises(RepoNotFound) as caught:
        await client.snapshot(wrong_case, "main")
    message = str(caught.value)
    assert hub.url in message and repr(wrong_case) in message and "case" in message and "HF_ENDPOINT" in message
    assert caught.value.reason == "repo_not_found" and not caught.value.retryable


async def test_unreachable_hub() -> None:
    dead = HubClient(f"http://127.0.0.1:{unused_port()}", timeout=2.0)
    with pytest.raises(HubUnreachable) as caught:
        await dead.snapshot(DEFAULT_REPO, "main")
    assert caught.value.reason == "unreachable" and caught.value.retryable
    await dead.aclose()


async def test_offline_mode_makes_no_request_at_all(hub: FakeHub, tmp_path: Path) -> None:
    offline = HubClient(hub.url, timeout=2.0, offline=True)
    with pytest.raises(OfflineMode) as caught:
        await fetch_model(spec(), ModelCache(tmp_path), offline, min_free_disk_mb=1)
    assert "HF_HUB_OFFLINE" in str(caught.value)
    assert hub.requests == []
    assert offline._client is None


# -- transfer and faults ----------------------------------------------------------------------


async def test_clean_fetch_writes_verified_files_and_the_manifest_last(
    hub: FakeHub, client: HubClient, tmp_path: Path
) -> None:
    cache = ModelCache(tmp_path)
    progress: list[tuple[str, int, int | None]] = []
    manifest = await fetch(cache, client, SMALL_FILES, on_progress=lambda f, d, t: progress.append((f, d, t)))
    directory = cache.model_dir(spec())
    assert directory == tmp_path / "sentence-transformers--all-MiniLM-L6-v2" / "main"
    for entry in manifest.files:
        assert sha256(directory / entry.name) == hub.files[entry.name].sha256 == entry.sha256
    assert not list(directory.rglob("*.partial"))
    assert json.loads((directory / MANIFEST).read_text())["commit"] == hub.commit
    assert cache.verify(spec()) == []
    # Progress is per file and ends at each file's size.
    last = {f: d for f, d, _ in progress}
    assert last == {e.name: e.size for e in manifest.files}


async def test_dropped_connection_resumes_with_range_not_from_byte_zero(
    hub: FakeHub, client: HubClient, tmp_path: Path
) -> None:
    cache = ModelCache(tmp_path)
    hub.add_fault("drop", file="tokenizer.json", at_byte=200_000)
    with pytest.raises(HubUnreachable) as caught:
        await fetch(cache, client, SMALL_FILES)
    assert caught.value.reason == "connection_dropped"
    partial = cache.partial_path(spec(), "tokenizer.json")
    kept = partial.stat().st_size
    assert 0 < kept <= 200_000
    assert not cache.is_complete(spec())

    await fetch(cache, client, SMALL_FILES)
    gets = hub.file_requests("tokenizer.json")
    assert [r.range for r in gets] == [None, f"bytes={kept}-"]
    assert [r.status for r in gets] == [200, 206]
    assert sha256(cache.file_path(spec(), "tokenizer.json")) == hub.files["tokenizer.json"].sha256
    # Files finished before the drop were not fetched again.
    assert len(hub.file_requests("vocab.txt")) == 1


async def test_dropped_lfs_file_resumes_through_the_redirect(hub: FakeHub, client: HubClient, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    hub.add_fault("drop", file="model.safetensors", at_byte=5_000_000)
    with pytest.raises(HubUnreachable):
        await fetch(cache, client, ["*.safetensors"])
    kept = cache.partial_path(spec(), "model.safetensors").stat().st_size
    assert kept > 0
    await fetch(cache, client, ["*.safetensors"])
    served = [r for r in hub.file_requests("model.safetensors") if r.path.startswith("/cdn/")]
    assert [r.range for r in served] == [None, f"bytes={kept}-"]
    assert cache.verify(spec(["*.safetensors"])) == []


async def test_truncated_body_is_kept_and_resumed(hub: FakeHub, client: HubClient, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    hub.add_fault("truncate", file="vocab.txt", at_byte=100_000)
    with pytest.raises(TruncatedFile):
        await fetch(cache, client, SMALL_FILES)
    assert cache.partial_path(spec(), "vocab.txt").stat().st_size == 100_000
    await fetch(cache, client, SMALL_FILES)
    assert [r.range for r in hub.file_requests("vocab.txt")] == [None, "bytes=100000-"]
    assert sha256(cache.file_path(spec(), "vocab.txt")) == hub.files["vocab.txt"].sha256


async def test_corrupted_bytes_are_discarded_and_fetched_again_from_zero(
    hub: FakeHub, client: HubClient, tmp_path: Path
) -> None:
    cache = ModelCache(tmp_path)
    hub.add_fault("corrupt", file="tokenizer.json")
    with pytest.raises(IntegrityError) as caught:
        await fetch(cache, client, SMALL_FILES)
    assert caught.value.reason == "hash_mismatch"
    assert not cache.partial_path(spec(), "tokenizer.json").exists()
    assert not cache.file_path(spec(), "tokenizer.json").exists()
    await fetch(cache, client, SMALL_FILES)
    assert [r.range for r in hub.file_requests("tokenizer.json")] == [None, None]
    assert cache.verify(spec(SMALL_FILES)) == []


async def test_corrupted_lfs_file_fails_its_sha256(hub: FakeHub, client: HubClient, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    hub.add_fault("corrupt", file="model.safetensors")
    with pytest.raises(IntegrityError, match="sha256"):
        await fetch(cache, client, ["*.safetensors"])
    assert not cache.partial_path(spec(), "model.safetensors").exists()


async def test_slow_server_times_out_then_resumes(hub: FakeHub, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    impatient = HubClient(hub.url, timeout=0.3)
    hub.add_fault("slow", file="vocab.txt", delay=5.0)
    try:
        with pytest.raises(HubUnreachable) as caught:
            await fetch(cache, impatient, SMALL_FILES)
        assert caught.value.reason == "timeout" and caught.value.retryable
        await fetch(cache, impatient, SMALL_FILES)
    finally:
        await impatient.aclose()
    assert cache.verify(spec(SMALL_FILES)) == []


@pytest.mark.parametrize("status", [500, 429])
async def test_server_errors_carry_status_and_retry_after(
    hub: FakeHub, client: HubClient, tmp_path: Path, status: int
) -> None:
    hub.add_fault("status", file="vocab.txt", status=status, retry_after="3" if status == 429 else None)
    with pytest.raises(HubHTTPError) as caught:
        await fetch(ModelCache(tmp_path), client, SMALL_FILES)
    assert caught.value.status == status and caught.value.retryable
    assert caught.value.retry_after == (3.0 if status == 429 else None)


async def test_a_new_commit_voids_partial_files_of_the_old_one(hub: FakeHub, client: HubClient, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    hub.add_fault("drop", file="tokenizer.json", at_byte=100_000)
    with pytest.raises(HubUnreachable):
        await fetch(cache, client, SMALL_FILES)
    old_commit, hub.commit = hub.commit, "0" * 40
    try:
        await fetch(cache, client, SMALL_FILES)
    finally:
        hub.commit = old_commit
    assert [r.range for r in hub.file_requests("tokenizer.json")] == [None, None]


# -- the cache --------------------------------------------------------------------------------


async def test_verify_finds_missing_resized_and_altered_files(client: HubClient, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    await fetch(cache, client, SMALL_FILES)
    model = spec(SMALL_FILES)
    cache.file_path(model, "config.json").unlink()
    with cache.file_path(model, "vocab.txt").open("ab") as handle:
        handle.write(b"extra")
    tokenizer = cache.file_path(model, "tokenizer.json")
    data = bytearray(tokenizer.read_bytes())
    data[1000] ^= 0xFF
    tokenizer.write_bytes(bytes(data))
    problems = cache.verify(model)
    assert len(problems) == 3
    assert any(p.startswith("config.json: missing") for p in problems)
    assert any(p.startswith("vocab.txt: ") and "bytes, expected" in p for p in problems)
    assert any(p.startswith("tokenizer.json: sha256") for p in problems)


async def test_interrupted_download_is_not_complete_and_purge_removes_it(
    hub: FakeHub, client: HubClient, tmp_path: Path
) -> None:
    cache = ModelCache(tmp_path)
    hub.add_fault("status", file="vocab.txt", status=500)
    with pytest.raises(HubHTTPError):
        await fetch(cache, client, SMALL_FILES)
    model = spec(SMALL_FILES)
    assert cache.file_path(model, "config.json").is_file()  # some files made it...
    assert not cache.is_complete(model)  # ...but without a manifest the model does not exist
    assert cache.verify(model) and "no complete download" in cache.verify(model)[0]
    assert cache.purge(model)
    assert not cache.model_dir(model).exists()
    assert not cache.purge(model)


async def test_too_little_disk_is_refused_before_any_file_is_fetched(
    hub: FakeHub, client: HubClient, tmp_path: Path
) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    with pytest.raises(InsufficientDisk) as caught:
        await fetch_model(spec(), ModelCache(tmp_path), client, min_free_disk_mb=free_mb + 1024)
    message = str(caught.value)
    assert str(tmp_path) in message and "CITADEL_DOWNLOADS__MIN_FREE_DISK_MB" in message and "MiB" in message
    assert not caught.value.retryable
    assert [r for r in hub.requests if r.file] == []


async def test_cache_under_a_file_is_not_writable(hub: FakeHub, client: HubClient, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(CacheNotWritable) as caught:
        await fetch(ModelCache(blocker / "models"), client)
    assert str(blocker / "models") in str(caught.value) and "CITADEL_CACHE_DIR" in str(caught.value)
    assert hub.requests == []  # refused before touching the network


def test_read_only_cache_dir_gives_a_clear_error() -> None:
    # root writes through directory permissions, so as root the check runs in a child that has
    # dropped to `nobody` (after importing, since the interpreter lives under /root).
    base = Path(tempfile.mkdtemp(prefix="citadel-ro-"))
    read_only = base / "models"
    try:
        read_only.mkdir()
        base.chmod(0o755)
        read_only.chmod(0o555)
        code = (
            "import os, sys; from pathlib import Path; from app.downloads.cache import ModelCache\n"
            "from app.downloads.errors import CacheNotWritable\n"
            "if os.geteuid() == 0:\n    os.setgid(65534); os.setuid(65534)\n"
            f"try:\n    ModelCache(Path({str(read_only)!r})).ensure_writable()\nexcept CacheNotWritable as e:\n"
            "    print(e); sys.exit(3)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 3, result.stdout + result.stderr
        out = result.stdout
        assert (
            str(read_only) in out
            and "not writable" in out
            and "Permission denied" in out
            and "CITADEL_CACHE_DIR" in out
        )
    finally:
        read_only.chmod(0o755)
        shutil.rmtree(base)


# -- the `citadel models` commands ------------------------------------------------------------


def cli_env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    catalog = {HUB_MODEL: {"repo_id": DEFAULT_REPO, "files": SMALL_FILES, "dimensions": 384}}
    return {
        "CITADEL_DATA_DIR": str(tmp_path),
        "CITADEL_CACHE_DIR": str(tmp_path / "models"),
        "CITADEL_MODELS": json.dumps(catalog),
        "CITADEL_DOWNLOADS__RETRY_DELAY_SECONDS": "0.01",
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "COLUMNS": "200",
    }


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(models_app, list(args), env=env)


def test_cli_pull_verify_list_purge(hub: FakeHub, tmp_path: Path) -> None:
    env = cli_env(hub, tmp_path)
    hub.add_fault("status", target="api", status=500)
    pulled = invoke(env, "pull", HUB_MODEL)
    assert pulled.exit_code == 0, pulled.output
    assert "RETRYING attempt 1/3: http_500" in pulled.output
    assert f"{HUB_MODEL} is ready" in pulled.output
    model = ModelSpec(name=HUB_MODEL, repo_id=DEFAULT_REPO, files=SMALL_FILES, dimensions=384)
    cache = ModelCache(tmp_path / "models")
    assert cache.verify(model) == []

    listed = invoke(env, "list")
    assert listed.exit_code == 0
    row = next(line for line in listed.output.splitlines() if HUB_MODEL in line)
    assert "cached (" in row and "default" not in row
    assert "bundled" in next(
        line for line in listed.output.splitlines() if "all-MiniLM-L6-v2 " in line and "package" in line
    )

    assert invoke(env, "verify", HUB_MODEL).exit_code == 0
    cache.file_path(model, "vocab.txt").write_text("tampered")
    verified = invoke(env, "verify")
    assert verified.exit_code == 1
    assert "vocab.txt: " in verified.output and "expected" in verified.output

    purged = invoke(env, "purge", HUB_MODEL)
    assert purged.exit_code == 0 and "removed" in purged.output
    assert not cache.model_dir(model).exists()


def test_cli_pull_of_a_missing_repo_fails_with_the_reason(hub: FakeHub, tmp_path: Path) -> None:
    env = cli_env(hub, tmp_path)
    env["CITADEL_MODELS"] = json.dumps({HUB_MODEL: {"repo_id": "nobody/nothing", "dimensions": 384}})
    result = invoke(env, "pull", HUB_MODEL)
    assert result.exit_code == 1
    assert "FAILED after 1 attempt(s)" in result.output and "HTTP 404" in result.output


def test_cli_unknown_model_exits_2(hub: FakeHub, tmp_path: Path) -> None:
    result = invoke(cli_env(hub, tmp_path), "pull", "no/such-model")
    assert result.exit_code == 2 and "unknown model" in result.output
