"""The README's "Code generation" configurations, taken from README.md as written, do what it says:

- graphql-codegen (npm, client preset): with the README's `codegen.ts` and `src/json.ts`, codegen
  runs with `strictScalars: true` over operations using every custom scalar, and `tsc --strict`
  compiles code that only compiles when DateTime is `string`, Long `number` and JSON `JsonValue`
  (`@ts-expect-error` lines fail the build if a scalar were `any`); with one scalar left out of
  the mapping, codegen stops;
- ariadne-codegen (in a virtual environment of its own: it requires graphql-core < 3.3, Citadel's
  is 3.3) generates a client from the README's `[tool.ariadne-codegen]` that, against a real
  server, gives `datetime`s, `int`s and JSON objects;
- gql with the README's snippet, run against a real server, parses DateTime into `datetime`.

schema.graphql is the live schema: tests/unit/test_docs_in_sync.py checks it equals the code's.
"""

from __future__ import annotations

import datetime as dt
import importlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from graphql import GraphQLScalarType, build_schema, specified_scalar_types

from tests.e2e.access_support import ADMIN_KEY, serving
from tests.support.npm import npm_install
from tests.support.databases import temporary_database

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schema.graphql"
COLLECTION = "recipes"  # the name the README's gql example queries
DOCUMENTS = [
    {"id": "stew", "text": "A slow beef stew with carrots.", "metadata": {"topic": "cooking", "n": 120, "tags": ["winter"]}},
    {"id": "bread", "text": "Sourdough bread needs a starter.", "metadata": {"topic": "baking", "n": 45}},
]

OPERATIONS_TS = '''import { graphql } from "./gql";

export const SearchRecipes = graphql(`
  query SearchRecipes($collection: String!, $query: String!, $filter: JSON) {
    search(collection: $collection, query: $query, filter: $filter, limit: 5) {
      hits { id score metadata document { createdAt updatedAt } }
    }
  }
`);

export const CollectionSizes = graphql(`
  query CollectionSizes {
    collections { name createdAt documentCount }
  }
`);
'''

# Compiles only if DateTime is string, Long number and JSON JsonValue: each @ts-expect-error line
# must be an error, or tsc reports the directive unused (as it would with `any`).
USAGE_TS = '''import type { CollectionSizesQuery, SearchRecipesQuery, SearchRecipesQueryVariables } from "./gql/graphql";
import type { JsonValue } from "./json";

declare const sizes: CollectionSizesQuery;
declare const found: SearchRecipesQuery;

export const created: string = sizes.collections[0].createdAt;
export const asDate: Date = new Date(found.search.hits[0].document.updatedAt);
export const count: number = sizes.collections[0].documentCount + 1;
export const metadata: JsonValue | null = found.search.hits[0].metadata;
export const variables: SearchRecipesQueryVariables = {
  collection: "recipes", query: "stew", filter: { and: [{ topic: { in: ["cooking"] } }, { n: { gte: 100 } }] },
};

// @ts-expect-error DateTime is an ISO-8601 string, not a number
export const notANumber: number = sizes.collections[0].createdAt;
// @ts-expect-error DateTime is a string, not a Date
export const notADate: Date = sizes.collections[0].createdAt;
// @ts-expect-error Long is a number, not a string
export const notAString: string = sizes.collections[0].documentCount;
// @ts-expect-error JSON is a JSON value, not any: a function is not one
export const notJson: SearchRecipesQueryVariables = { collection: "c", query: "q", filter: () => 1 };
// @ts-expect-error JSON output is a JSON value, not any: it must be narrowed before use as a string
export const notNarrowed: string = found.search.hits[0].metadata;
'''

QUERIES_GRAPHQL = """query CollectionSizes {
  collections { name createdAt documentCount }
}

query Recipes($collection: String!, $filter: JSON) {
  documents(collection: $collection, filter: $filter) { items { id metadata createdAt updatedAt } }
}
"""


def readme_section() -> str:
    readme = (ROOT / "README.md").read_text()
    assert "\n### Code generation\n" in readme, "README.md has no 'Code generation' section"
    section = readme.split("\n### Code generation\n", 1)[1]
    return re.split(r"\n##+ ", section, maxsplit=1)[0]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", readme_section(), flags=re.S)


def codegen_ts() -> str:
    [config] = [b for b in blocks("ts") if "CodegenConfig" in b]
    return config


def json_ts() -> str:
    [json_type] = [b for b in blocks("ts") if b.startswith("// src/json.ts")]
    return json_type


def custom_scalars() -> set[str]:
    schema = build_schema(SCHEMA.read_text())
    return {
        name
        for name, kind in schema.type_map.items()
        if isinstance(kind, GraphQLScalarType) and name not in specified_scalar_types
    }


def test_the_readme_maps_every_custom_scalar_of_the_schema():
    scalars = custom_scalars()
    assert scalars == {"DateTime", "JSON", "Long", "Upload"}, scalars  # a new one needs a README row and mappings
    section = readme_section()
    for name in scalars:
        assert f"| `{name}` |" in section, f"README's scalar table has no row for {name}"

    mapping = re.search(r"scalars: \{(.*?)\n\s*\}", codegen_ts(), flags=re.S)
    assert mapping, codegen_ts()
    assert set(re.findall(r"^\s*(\w+):", mapping.group(1), flags=re.M)) == scalars, mapping.group(1)
    assert re.search(r"strictScalars: true", codegen_ts())

    [toml] = blocks("toml")
    ariadne = tomllib.loads(toml)["tool"]["ariadne-codegen"]
    assert set(ariadne["scalars"]) == scalars - {"Upload"}, ariadne  # ariadne-codegen maps Upload to its own class
    assert ariadne["scalars"]["DateTime"]["type"] == "datetime.datetime"


# -- graphql-codegen ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codegen_folder(tmp_path_factory) -> Path:
    """graphql-codegen, its client preset, TypeScript and graphql from npm in a scratch folder."""
    folder = npm_install(
        tmp_path_factory.mktemp("graphql-codegen"),
        "@graphql-codegen/cli@7", "@graphql-codegen/client-preset@6", "typescript@7", "graphql@16",
        what="graphql-codegen",
    )
    shutil.copy(SCHEMA, folder / "schema.graphql")
    (folder / "src").mkdir()
    (folder / "src" / "json.ts").write_text(json_ts())
    (folder / "src" / "operations.ts").write_text(OPERATIONS_TS)
    (folder / "src" / "usage.ts").write_text(USAGE_TS)
    return folder


def run_codegen(folder: Path, config: str) -> subprocess.CompletedProcess:
    (folder / "codegen.ts").write_text(config)
    shutil.rmtree(folder / "src" / "gql", ignore_errors=True)
    return subprocess.run(
        [str(folder / "node_modules" / ".bin" / "graphql-codegen"), "--config", "codegen.ts"],
        cwd=folder, capture_output=True, text=True, timeout=300,
    )


def test_graphql_codegen_with_strict_scalars_types_every_scalar(codegen_folder):
    done = run_codegen(codegen_folder, codegen_ts())
    assert done.returncode == 0, done.stdout + done.stderr
    generated = (codegen_folder / "src" / "gql" / "graphql.ts").read_text()
    assert "import { JsonValue } from '../json'" in generated or 'import { JsonValue } from "../json"' in generated, generated[:600]
    assert "CollectionSizesQuery" in generated and "SearchRecipesQueryVariables" in generated

    compiled = subprocess.run(
        [
            str(codegen_folder / "node_modules" / ".bin" / "tsc"), "--noEmit", "--strict",
            "--target", "es2022", "--module", "esnext", "--moduleResolution", "bundler",
            "src/usage.ts", "src/operations.ts",
        ],
        cwd=codegen_folder, capture_output=True, text=True, timeout=300,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr


def test_graphql_codegen_stops_on_a_scalar_left_out_of_the_mapping(codegen_folder):
    without_long = re.sub(r"\n\s*Long: [^\n]*", "", codegen_ts())
    assert without_long != codegen_ts()
    done = run_codegen(codegen_folder, without_long)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Unknown scalar type Long" in done.stdout + done.stderr, done.stdout + done.stderr


# -- Python clients against a real server ---------------------------------------------------------


@pytest.fixture(scope="module")
async def codegen_database():
    async with temporary_database("citadel_codegen") as url:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory, codegen_database):
    """A server (keys required) holding the README's `recipes` collection with two documents."""
    started = serving(str(tmp_path_factory.mktemp("codegen")), codegen_database, "e2e-codegen.log")
    running = next(started)
    try:
        created = running.graphql(
            'mutation($n: String!) { createCollection(name: $n, indexedFields: ["topic"]) { name } }',
            ADMIN_KEY, {"n": COLLECTION},
        )
        assert "errors" not in created, created
        ingested = running.graphql(
            "mutation($c: String!, $d: [DocumentInput!]!) { ingest(collection: $c, documents: $d) { inserted } }",
            ADMIN_KEY, {"c": COLLECTION, "d": DOCUMENTS},
        )
        assert ingested == {"data": {"ingest": {"inserted": 2}}}, ingested
        yield running
    finally:
        started.close()


def test_the_servers_datetime_is_iso_8601_in_utc(server):
    body = server.graphql(f'{{ document(collection: "{COLLECTION}", id: "stew") {{ createdAt }} }}', ADMIN_KEY)
    wire = body["data"]["document"]["createdAt"]
    assert isinstance(wire, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", wire), wire


def test_gql_readme_snippet_parses_datetime(server, monkeypatch):
    [snippet] = blocks("python")
    for placeholder in ("http://127.0.0.1:8000", "Bearer <key>"):
        assert placeholder in snippet, placeholder
    snippet = snippet.replace("http://127.0.0.1:8000", server.url).replace("Bearer <key>", f"Bearer {ADMIN_KEY}")
    monkeypatch.chdir(ROOT)  # it reads schema.graphql from where it runs
    names: dict = {}
    exec(compile(snippet, "README.md (gql)", "exec"), names)

    [item] = names["items"]  # the README's own query: documents of `recipes` about cooking
    assert item["id"] == "stew"
    assert isinstance(item["createdAt"], dt.datetime) and item["createdAt"].utcoffset() == dt.timedelta(0), item
    assert abs(dt.datetime.now(dt.timezone.utc) - item["createdAt"]) < dt.timedelta(hours=1), item
    assert item["metadata"] == DOCUMENTS[0]["metadata"], item

    client, gql = names["client"], names["gql"]
    sizes = client.execute(gql("{ collections { name createdAt documentCount } }"))["collections"]
    assert [(c["name"], c["documentCount"]) for c in sizes] == [(COLLECTION, 2)], sizes
    assert isinstance(sizes[0]["createdAt"], dt.datetime) and isinstance(sizes[0]["documentCount"], int), sizes


@pytest.fixture(scope="module")
def ariadne_codegen(tmp_path_factory) -> Path:
    """ariadne-codegen from PyPI in a virtual environment of its own (it pins graphql-core < 3.3)."""
    folder = tmp_path_factory.mktemp("ariadne-codegen")
    created = subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stderr
    done = subprocess.run(
        [str(folder / "venv" / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "ariadne-codegen~=0.19"],
        capture_output=True, text=True, timeout=600,
    )
    if done.returncode != 0:
        pytest.skip(f"pip could not install ariadne-codegen (no registry?): {done.stderr[-500:]}")
    return folder / "venv" / "bin" / "ariadne-codegen"


async def test_ariadne_codegen_client_parses_every_scalar(server, ariadne_codegen, tmp_path):
    [toml] = blocks("toml")
    config = tomllib.loads(toml)["tool"]["ariadne-codegen"]
    shutil.copy(SCHEMA, tmp_path / config["schema_path"])
    (tmp_path / config["queries_path"]).write_text(QUERIES_GRAPHQL)
    (tmp_path / "pyproject.toml").write_text(toml)
    done = subprocess.run([str(ariadne_codegen)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    package = config["target_package_name"]
    generated = (tmp_path / package / "collection_sizes.py").read_text()
    assert "created_at: datetime" in generated and "document_count: int" in generated, generated

    sys.path.insert(0, str(tmp_path))  # the generated client runs in this environment (httpx, pydantic)
    try:
        client_module = importlib.import_module(package)
        async with client_module.Client(url=server.url + "/graphql", headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
            sizes = await client.collection_sizes()
            recipes = await client.recipes(collection=COLLECTION, filter_={"topic": {"eq": "cooking"}})  # as the README says
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]

    [collection] = sizes.collections
    assert collection.name == COLLECTION and collection.document_count == 2 and type(collection.document_count) is int
    assert isinstance(collection.created_at, dt.datetime) and collection.created_at.utcoffset() == dt.timedelta(0)
    [item] = recipes.documents.items
    assert item.id == "stew" and item.metadata == DOCUMENTS[0]["metadata"], item
    assert isinstance(item.updated_at, dt.datetime) and item.updated_at >= item.created_at, item
