"""Unknown CITADEL_* variables are reported with the closest real setting; real ones are not."""

from __future__ import annotations

from app.settings_check import known_names, unknown_settings
from app.settings_table import rows


def test_every_documented_variable_is_known():
    documented = {row.split("`")[1] for row in rows()}
    assert documented <= known_names()
    assert unknown_settings({name: "x" for name in documented}, dotenv=None) == []


def test_a_typo_is_reported_with_the_setting_it_resembles():
    (found,) = unknown_settings({"CITADEL_SERVR__PORT": "1", "PATH": "/bin"}, dotenv=None)
    assert found.name == "CITADEL_SERVR__PORT"
    assert found.suggestion == "CITADEL_SERVER__PORT"
    assert "CITADEL_SERVR__PORT" in str(found) and "did you mean CITADEL_SERVER__PORT" in str(found)


def test_names_are_matched_case_insensitively_like_pydantic_settings():
    assert unknown_settings({"citadel_server__port": "1"}, dotenv=None) == []


def test_groups_given_as_json_and_other_tools_variables_are_not_reported():
    env = {"CITADEL_SERVER": "{}", "CITADEL_TEST_POSTGRES_URL": "x", "CITADEL_TORCH_SPEC": "torch"}
    assert unknown_settings(env, dotenv=None) == []


def test_a_value_is_never_shown_only_the_name():
    (found,) = unknown_settings({"CITADEL_AUTH_ADMINKEY": "s3cret-value"}, dotenv=None)
    assert "s3cret-value" not in str(found)


def test_dotenv_keys_are_checked_too(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nCITADEL_DEFAULT_MODLE=x\nexport CITADEL_DATA_DIR=/tmp\nOTHER=1\n")
    (found,) = unknown_settings({}, dotenv=dotenv)
    assert (found.name, found.source, found.suggestion) == ("CITADEL_DEFAULT_MODLE", str(dotenv), "CITADEL_DEFAULT_MODEL")


def test_a_renamed_setting_still_takes_its_old_name(monkeypatch):
    from app.settings import Settings

    assert unknown_settings({"CITADEL_INGEST__CHUNK_SIZE": "7"}, dotenv=None) == []
    monkeypatch.setenv("CITADEL_INGEST__CHUNK_SIZE", "7")
    assert Settings(_env_file=None).ingest.embed_batch == 7  # type: ignore[call-arg]
    monkeypatch.setenv("CITADEL_INGEST__EMBED_BATCH", "9")
    monkeypatch.delenv("CITADEL_INGEST__CHUNK_SIZE")
    assert Settings(_env_file=None).ingest.embed_batch == 9  # type: ignore[call-arg]
