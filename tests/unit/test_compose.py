"""docker-compose.yml, Dockerfile and .dockerignore, checked by reading them (no Docker engine here).

What is checked is what breaks a deployment silently: a URL pointing at a service or port that
does not exist, a variable Settings never reads, a volume declared but not mounted, a service
without a healthcheck, a gateway bound to 127.0.0.1 inside its container.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from app.settings import ServerSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
STORES = {"postgres": 5432, "redis": 6379, "qdrant": 6333}
URL_SCHEMES = {"CITADEL_DATABASE_URL": ("postgresql", "postgres"), "CITADEL_REDIS_URL": ("redis", "redis"), "CITADEL_QDRANT_URL": ("http", "qdrant")}
# Variables of the ecosystem that Settings honours under their own names.
ECOSYSTEM_VARS = {"HF_HOME", "HF_ENDPOINT", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES"}
STORE_DATA_PATHS = {"postgres": "/var/lib/postgresql/data", "redis": "/data", "qdrant": "/qdrant/storage"}

_VAR = re.compile(r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, $VAR, and $$ for a literal $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        if name in env:
            return env[name]
        if match.group("default") is not None:
            return match.group("default")
        raise AssertionError(f"compose variable ${name} has no default: {value!r}")

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def compose(raw_compose) -> dict:
    return interpolate(raw_compose, env={})


@pytest.fixture(scope="module")
def all_services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def services(all_services) -> dict:
    """What `docker compose up` starts: the services outside any profile."""
    return {name: s for name, s in all_services.items() if not s.get("profiles")}


@pytest.fixture(scope="module")
def cluster(all_services) -> dict:
    """What `--profile cluster` adds."""
    return {name: s for name, s in all_services.items() if "cluster" in (s.get("profiles") or [])}


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the "KEY=value" form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def settings_field_exists(var: str) -> bool:
    """CITADEL_SERVER__HOST -> Settings.server.host, walking nested groups like pydantic-settings does."""
    parts = var.removeprefix("CITADEL_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
                return False
            model = field.annotation
    return True


def named_volume_mounts(service: dict) -> dict[str, str]:
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source"), volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if source and not source.startswith((".", "/", "~")):
            mounts[source] = target
    return mounts


# --- compose: services and images --------------------------------------------------------------


def test_services_are_the_three_stores_and_the_gateway(services):
    assert set(services) == {"postgres", "redis", "qdrant", "citadel"}


def test_stores_use_their_official_images(services):
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    repo, _, tag = services["qdrant"]["image"].partition(":")
    assert repo == "qdrant/qdrant"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), "pin a Qdrant release, not a moving tag"


def test_gateway_is_built_from_the_dockerfile(services):
    build = services["citadel"]["build"]
    if isinstance(build, str):
        build = {"context": build}
    assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
    dockerfile_args = {i.split("=", 1)[0] for kind, i in dockerfile() if kind == "ARG"}
    assert set(build.get("args", {})) <= dockerfile_args


# --- compose: environment wiring ---------------------------------------------------------------


@pytest.mark.parametrize("var", sorted(URL_SCHEMES))
def test_each_store_url_points_at_its_service_and_port(services, var):
    scheme, service = URL_SCHEMES[var]
    url = urlsplit(environment(services["citadel"])[var])
    assert url.scheme == scheme
    assert url.hostname == service and url.hostname in services
    assert url.port == STORES[service]


def test_database_url_credentials_match_the_postgres_service(services):
    url = urlsplit(environment(services["citadel"])["CITADEL_DATABASE_URL"])
    pg = environment(services["postgres"])
    assert url.username == pg["POSTGRES_USER"]
    assert url.password == pg["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == pg["POSTGRES_DB"]


def test_the_password_comes_from_one_variable(raw_compose):
    # Both sides must change together when an operator sets POSTGRES_PASSWORD.
    citadel_env = environment(raw_compose["services"]["citadel"])
    pg_env = environment(raw_compose["services"]["postgres"])
    assert "${POSTGRES_PASSWORD" in citadel_env["CITADEL_DATABASE_URL"]
    assert pg_env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    assert interpolate(citadel_env["CITADEL_DATABASE_URL"], {"POSTGRES_PASSWORD": "s3cret"}).startswith(
        "postgresql://citadel:s3cret@postgres:5432/"
    )


def test_every_variable_set_for_the_gateway_is_read_by_settings(services):
    for var in environment(services["citadel"]):
        if var.startswith("CITADEL_"):
            assert settings_field_exists(var), f"{var} is not a Settings field"
        else:
            assert var in ECOSYSTEM_VARS, f"{var} is neither CITADEL_* nor a variable Settings honours"


def test_settings_built_from_the_compose_environment(services, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for var in [v for v in os.environ if v.startswith("CITADEL_") or v in ECOSYSTEM_VARS]:
        monkeypatch.delenv(var)
    env = environment(services["citadel"])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.database_url == env["CITADEL_DATABASE_URL"]
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.qdrant_url == "http://qdrant:6333"
    assert not (settings.embedded_postgres or settings.embedded_redis or settings.embedded_qdrant)
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 8000
    assert settings.data_dir == Path(env["CITADEL_DATA_DIR"])
    assert settings.model_cache_dir == Path(env["CITADEL_CACHE_DIR"])
    assert settings.hf_home == Path(env["HF_HOME"])


def test_gateway_port_is_published_and_matches_the_server_port(services):
    env = environment(services["citadel"])
    published = [str(p) for p in services["citadel"]["ports"]]
    assert published == ["8000:8000"]
    container_port = int(published[0].rsplit(":", 1)[1])
    assert container_port == int(env.get("CITADEL_SERVER__PORT", ServerSettings().port)) == ServerSettings().port
    for store in STORES:
        assert "ports" not in services[store], f"{store} need not be reachable from outside"


# --- compose: volumes -------------------------------------------------------------------------


def test_named_volumes_are_declared_and_each_declared_one_is_used(compose, all_services):
    used = {name for s in all_services.values() for name in named_volume_mounts(s)}
    declared = set(compose.get("volumes") or {})
    assert used == declared


@pytest.mark.parametrize("store", sorted(STORE_DATA_PATHS))
def test_each_store_keeps_its_data_in_a_named_volume(services, store):
    assert STORE_DATA_PATHS[store] in named_volume_mounts(services[store]).values()


def test_gateway_data_and_model_cache_are_on_volumes(services):
    env = environment(services["citadel"])
    targets = [PurePosixPath(t) for t in named_volume_mounts(services["citadel"]).values()]
    for var in ("CITADEL_DATA_DIR", "CITADEL_CACHE_DIR", "HF_HOME"):
        path = PurePosixPath(env[var])
        assert any(path == t or t in path.parents for t in targets), f"{var}={path} is not on a volume"
    assert len(set(targets)) == 2, "data and model cache are separate volumes"


# --- compose: healthchecks and start order ---------------------------------------------------


def healthcheck_command(service: dict) -> str:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return test
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return test[1] if test[0] == "CMD-SHELL" else shlex.join(test[1:])


def test_every_service_has_a_healthcheck(services):
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"] and check["test"][0] != "NONE"
        assert "interval" in check and "timeout" in check and "retries" in check


def test_store_healthchecks_use_tools_their_images_have(services):
    assert healthcheck_command(services["postgres"]).startswith("pg_isready")
    assert "redis-cli ping" in healthcheck_command(services["redis"])
    qdrant = services["qdrant"]["healthcheck"]["test"]
    assert qdrant[:3] == ["CMD", "bash", "-c"]
    assert "/dev/tcp/127.0.0.1/6333" in qdrant[3] and "GET /readyz" in qdrant[3]
    assert not re.search(r"\b(curl|wget)\b", qdrant[3]), "the Qdrant image has neither curl nor wget"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed here, cannot syntax-check the Qdrant healthcheck")
def test_qdrant_healthcheck_is_valid_bash_after_compose_escaping(services):
    script = services["qdrant"]["healthcheck"]["test"][3]
    assert "$status" in script and "$$" not in script
    result = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_gateway_healthcheck_hits_healthz_on_the_server_port(services):
    command = healthcheck_command(services["citadel"])
    assert f"http://127.0.0.1:{ServerSettings().port}/healthz" in command


def test_gateway_waits_for_healthy_stores(services):
    depends = services["citadel"]["depends_on"]
    assert set(depends) == set(STORES)
    assert all(d["condition"] == "service_healthy" for d in depends.values())
    for store in STORES:
        assert "depends_on" not in services[store]


# --- Dockerfile and .dockerignore -------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's build stages, each starting with its FROM."""
    out: list[list[tuple[str, str]]] = []
    for instruction in dockerfile():
        if instruction[0] == "FROM":
            out.append([])
        out[-1].append(instruction)
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for kind, args in dockerfile():
        if kind == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def only(kind: str) -> str:
    found = [args for k, args in dockerfile() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {found}"
    return found[0]


def test_dockerfile_base_image_and_non_root_user():
    assert stages()[-1][0] == ("FROM", "python:3.11-slim")
    user = only("USER")
    assert user.split(":")[0] not in ("root", "0")


def test_dockerfile_installs_cpu_torch_by_default_and_the_project():
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for k, a in dockerfile() if k == "ARG" and "=" in a}
    assert args["TORCH_VARIANT"] == "cpu"
    assert "${TORCH_VARIANT}" in args["TORCH_INDEX_URL"]
    runs = [a for k, a in stages()[-1] if k == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if '--index-url "${TORCH_INDEX_URL}" torch' in r)
    project_step = next(i for i, r in enumerate(runs) if re.search(r"pip install \S*citadel-\*\.whl", r))
    assert torch_step < project_step, "torch must be installed before the project, or pip pulls the CUDA build"


def test_image_installs_the_built_wheel_runtime_only_and_keeps_no_source_tree():
    builder, image = stages()
    assert builder[0][1].endswith(" AS wheel")
    assert any(k == "RUN" and "pip wheel" in a and "--no-deps" in a for k, a in builder)
    copies = [a for k, a in image if k == "COPY"]
    assert copies == ["--from=wheel /dist /tmp/dist"], "the image must hold the installed wheel, not the source"
    installs = [a for k, a in image if k == "RUN" and "citadel-" in a]
    assert installs and all("[" not in a for a in installs), "no extras: what users install is what runs"
    # The migrations travel inside the package the wheel is built from.
    assert (ROOT / "app" / "migrations" / "env.py").is_file()
    assert (ROOT / "app" / "migrations" / "versions" / "__init__.py").is_file()


def test_dockerfile_cmd_runs_the_console_script_serve():
    assert json.loads(only("CMD")) == ["citadel", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "citadel" in scripts
    import typer.main

    from app.cli import cli

    assert "serve" in typer.main.get_command(cli).commands


def test_dockerfile_expose_env_and_healthcheck_agree_with_settings():
    port = ServerSettings().port
    assert only("EXPOSE") == str(port)
    env = dockerfile_env()
    assert env["CITADEL_SERVER__HOST"] == "0.0.0.0", "127.0.0.1 inside a container is unreachable from outside"
    assert int(env["CITADEL_SERVER__PORT"]) == port
    for var in env:
        if var.startswith("CITADEL_"):
            assert settings_field_exists(var), var
    healthcheck = only("HEALTHCHECK")
    assert healthcheck.split()[0].startswith("--") and " CMD " in f" {healthcheck} "
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert "/healthz" in command[-1] and f"'CITADEL_SERVER__PORT', '{port}'" in command[-1]


def test_dockerfile_volumes_match_its_data_and_cache_dirs():
    env = dockerfile_env()
    volumes = set(json.loads(only("VOLUME")))
    assert {env["CITADEL_DATA_DIR"], env["CITADEL_CACHE_DIR"]} == volumes
    assert PurePosixPath(env["CITADEL_CACHE_DIR"]) in PurePosixPath(env["HF_HOME"]).parents


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerfile_copies_files_that_exist_and_are_not_ignored():
    ignored = set(dockerignore())
    for kind, args in dockerfile():
        if kind != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path"
            assert source not in ignored, f"COPY {source} but .dockerignore excludes it"


def test_dockerignore_keeps_secrets_and_local_environments_out():
    ignored = set(dockerignore())
    assert {".env", ".venv", ".git"} <= ignored


# --- compose: the cluster profile (3-node Qdrant in distributed mode) ------------------------------


def test_cluster_profile_is_three_qdrant_nodes_and_a_gateway(cluster, services):
    assert set(cluster) == {"qdrant-node-1", "qdrant-node-2", "qdrant-node-3", "citadel-cluster"}
    assert not set(cluster) & set(services)


def test_cluster_nodes_run_distributed_and_join_the_first(cluster, services):
    first = cluster["qdrant-node-1"]["command"]
    assert first[first.index("--uri") + 1] == "http://qdrant-node-1:6335"  # 6335: Qdrant's p2p port
    for name in ("qdrant-node-2", "qdrant-node-3"):
        node = cluster[name]
        assert node["command"][node["command"].index("--bootstrap") + 1] == "http://qdrant-node-1:6335"
        assert node["depends_on"]["qdrant-node-1"]["condition"] == "service_healthy"
    for name in ("qdrant-node-1", "qdrant-node-2", "qdrant-node-3"):
        node = cluster[name]
        assert node["image"] == services["qdrant"]["image"], "one Qdrant release for every node"
        assert environment(node)["QDRANT__CLUSTER__ENABLED"] == "true"
        assert node["healthcheck"]["test"] == services["qdrant"]["healthcheck"]["test"]
    data = [named_volume_mounts(cluster[f"qdrant-node-{i}"]) for i in (1, 2, 3)]
    assert all(list(d.values()) == ["/qdrant/storage"] for d in data)
    assert len({name for d in data for name in d}) == 3, "each node has its own storage"


def test_cluster_gateway_uses_the_cluster_with_replicated_shards(cluster, services):
    gateway = cluster["citadel-cluster"]
    env = environment(gateway)
    url = urlsplit(env["CITADEL_QDRANT_URL"])
    assert url.hostname in cluster and url.port == 6333
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        vectors={
            "shard_number": env["CITADEL_VECTORS__SHARD_NUMBER"],
            "replication_factor": env["CITADEL_VECTORS__REPLICATION_FACTOR"],
            "write_consistency_factor": env["CITADEL_VECTORS__WRITE_CONSISTENCY_FACTOR"],
        },
    )
    nodes = sum(1 for name in cluster if name.startswith("qdrant-node-"))
    assert 1 < settings.vectors.replication_factor <= nodes
    assert settings.vectors.write_consistency_factor <= settings.vectors.replication_factor
    assert settings.vectors.shard_number >= nodes
    for var in env:
        if var.startswith("CITADEL_"):
            assert settings_field_exists(var), var
    assert set(gateway["depends_on"]) == {"postgres", "redis", "qdrant-node-1", "qdrant-node-2", "qdrant-node-3"}
    # Its own database (created by the postgres init script) and its own published port.
    assert urlsplit(env["CITADEL_DATABASE_URL"]).path == "/citadel_cluster"
    init = ROOT / "deploy" / "postgres" / "create-cluster-database.sql"
    assert "CREATE DATABASE citadel_cluster" in init.read_text()
    mounted = [v for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert mounted and (ROOT / mounted[0].split(":")[0]).resolve() == init.resolve()
    published = {p.split(":")[0] for s in services.values() for p in s.get("ports", [])}
    assert not published & {p.split(":")[0] for p in gateway["ports"]}
