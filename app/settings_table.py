"""Render the README's configuration table from the Settings model, so the two never drift."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from app.settings import Settings

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
INTERNAL_FIELDS = {"hf_endpoint", "hf_offline", "hf_home"}  # read from HF_* variables instead


def _default(field) -> str:
    if field.default_factory is not None:
        name = getattr(field.default_factory, "__name__", "")
        return {"_default_data_dir": "user data dir/citadel", "builtin_catalog": "built-in catalog"}.get(name, "")
    if field.default is PydanticUndefined or field.default is None:
        return ""
    return f"`{field.default}`"


def rows(model: type[BaseModel] = Settings, prefix: str = "CITADEL_") -> list[str]:
    out: list[str] = []
    for name, field in model.model_fields.items():
        if name in INTERNAL_FIELDS:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(rows(annotation, f"{prefix}{name.upper()}__"))
            continue
        out.append(f"| `{prefix}{name.upper()}` | {_default(field)} | {field.description or ''} |")
    return out


def render() -> str:
    return "\n".join([START, "| variable | default | meaning |", "|---|---|---|", *rows(), END])


def update_readme(path: Path) -> bool:
    text = path.read_text()
    before, _, rest = text.partition(START)
    _, _, after = rest.partition(END)
    new = before + render() + after
    changed = new != text
    if changed:
        path.write_text(new)
    return changed


if __name__ == "__main__":
    update_readme(Path(__file__).resolve().parents[1] / "README.md")
