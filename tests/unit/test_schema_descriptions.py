"""Every type, field, argument and enum value of the schema has a description (GraphiQL's docs
pane, codegen comments): introspected as a client sees it, so nothing the schema serves escapes."""

from __future__ import annotations

from graphql import get_introspection_query, graphql_sync

from app.graphql.schema import build_schema

BUILT_IN_SCALARS = {"String", "Int", "Float", "Boolean", "ID"}


def undescribed(introspection: dict) -> list[str]:
    missing: list[str] = []
    for kind in introspection["__schema"]["types"]:
        name = kind["name"]
        if name.startswith("__") or name in BUILT_IN_SCALARS:
            continue
        if not (kind.get("description") or "").strip():
            missing.append(f"type {name}")
        for field in kind.get("fields") or []:
            if not (field.get("description") or "").strip():
                missing.append(f"field {name}.{field['name']}")
            for arg in field.get("args") or []:
                if not (arg.get("description") or "").strip():
                    missing.append(f"argument {name}.{field['name']}({arg['name']})")
        for field in kind.get("inputFields") or []:
            if not (field.get("description") or "").strip():
                missing.append(f"input field {name}.{field['name']}")
        for value in kind.get("enumValues") or []:
            if not (value.get("description") or "").strip():
                missing.append(f"enum value {name}.{value['name']}")
    return missing


def introspect() -> dict:
    schema = build_schema()._schema  # the graphql-core schema clients introspect
    result = graphql_sync(schema, get_introspection_query(descriptions=True, input_value_deprecation=True))
    assert result.errors is None, result.errors
    return result.data


def test_every_type_field_argument_and_enum_value_is_described() -> None:
    missing = undescribed(introspect())
    assert missing == [], "describe these in the schema (description=...):\n" + "\n".join(missing)


def test_the_check_finds_what_lacks_a_description() -> None:
    """The walk above reaches each kind of element: a description taken away is reported."""
    data = introspect()
    types = {kind["name"]: kind for kind in data["__schema"]["types"]}
    search = next(f for f in types["Query"]["fields"] if f["name"] == "search")
    next(a for a in search["args"] if a["name"] == "filter")["description"] = None
    types["SearchMode"]["enumValues"][0]["description"] = ""
    next(f for f in types["DocumentInput"]["inputFields"] if f["name"] == "text")["description"] = None
    types["Chunk"]["description"] = " "
    assert sorted(undescribed(data)) == sorted([
        "argument Query.search(filter)",
        "type Chunk",
        "input field DocumentInput.text",
        f"enum value SearchMode.{types['SearchMode']['enumValues'][0]['name']}",
    ])


def test_filter_arguments_describe_the_filter_language() -> None:
    types = {kind["name"]: kind for kind in introspect()["__schema"]["types"]}
    for field_name in ("search", "facets"):
        field = next(f for f in types["Query"]["fields"] if f["name"] == field_name)
        description = next(a for a in field["args"] if a["name"] == "filter")["description"]
        for operator in ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "exists", '"and"', '"or"', '"not"'):
            assert operator in description, (field_name, operator)
