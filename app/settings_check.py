"""Find CITADEL_* variables (in the environment or .env) that no setting reads: a typo there is
otherwise silently ignored, and the server runs with a default the operator did not mean."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from pydantic import AliasChoices, BaseModel

from app.settings import Settings

PREFIX = "CITADEL_"
# Read by other tools than the server: the test suite, bootstrap.py.
NOT_SETTINGS = ("CITADEL_TEST_", "CITADEL_TORCH_SPEC")


@dataclass(frozen=True)
class UnknownSetting:
    name: str
    source: str  # "environment" or the .env path
    suggestion: str | None

    def __str__(self) -> str:
        hint = f"; did you mean {self.suggestion}?" if self.suggestion else ""
        return f"{self.name} (from {self.source}) is not a Citadel setting and is ignored{hint}"


def known_names(model: type[BaseModel] = Settings, prefix: str = PREFIX) -> set[str]:
    """Every variable name pydantic-settings reads for `model`: each field, and each group as a
    whole (a group may be given as one JSON object)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        full = f"{prefix}{name.upper()}"
        names.add(full)
        if isinstance(field.validation_alias, AliasChoices) and prefix != PREFIX:  # a nested field's old names
            names |= {f"{prefix}{alias.upper()}" for alias in field.validation_alias.choices if isinstance(alias, str)}
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and model is Settings:
            names |= known_names(annotation, f"{full}__")
    return names


def _dotenv_keys(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    keys = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        keys.append(line.removeprefix("export ").split("=", 1)[0].strip())
    return keys


def unknown_settings(
    environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")
) -> list[UnknownSetting]:
    environ = os.environ if environ is None else environ
    known = known_names()
    sources: list[tuple[str, Iterable[str]]] = [("environment", environ.keys())]
    if dotenv is not None and dotenv.is_file():
        sources.append((str(dotenv), _dotenv_keys(dotenv)))
    found: list[UnknownSetting] = []
    for source, keys in sources:
        for key in keys:
            upper = key.upper()  # pydantic-settings matches names case-insensitively
            if not upper.startswith(PREFIX) or upper.startswith(NOT_SETTINGS) or upper in known:
                continue
            close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
            found.append(UnknownSetting(name=key, source=source, suggestion=close[0] if close else None))
    return found


def warn_unknown_settings() -> None:
    for unknown in unknown_settings():
        logger.warning("{}", unknown)
