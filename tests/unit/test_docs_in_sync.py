"""Generated artefacts that are checked in must match the code that generates them."""

import re
from pathlib import Path

from app.graphql.schema import schema_sdl
from app.settings_table import render

ROOT = Path(__file__).resolve().parents[2]


def test_schema_graphql_matches_the_code():
    on_disk = (ROOT / "schema.graphql").read_text()
    assert on_disk == schema_sdl(), "schema.graphql is stale: run `citadel schema export -o schema.graphql`"


def test_readme_settings_table_matches_settings():
    assert render() in (ROOT / "README.md").read_text(), (
        "README configuration table is stale: run `python -m app.settings_table`"
    )


def signatures(sdl: str) -> str:
    """The SDL without its descriptions, on one line: the names and types the contract fixes."""
    sdl = re.sub(r'^\s*"""[\s\S]*?"""\s*\n', "", sdl, flags=re.M)  # block descriptions
    sdl = re.sub(r'^\s*"(?:[^"\\\n]|\\.)*"\s*\n', "", sdl, flags=re.M)  # one-line descriptions
    sdl = re.sub(r"[\s,]+", " ", sdl)
    return re.sub(r"\( ", "(", re.sub(r" \)", ")", sdl))


def test_api_contract_names_are_present():
    sdl = signatures(schema_sdl())
    for name in (
        "texts: [String!]!\n    model: String = null\n    kind: EmbedKind = DOCUMENT\n    normalize: Boolean = true",
        "): EmbedResult!",
        "modelDownloadProgress(model: String = null): DownloadEvent!",
        "downloadModel(name: String!): Model!",
        "deleteDocuments(collection: String!, ids: [ID!]!): Int!",
        "bytesDone: Long!",
        "documentCount: Long!",
        # Jobs (issue 24): the names and types its contract fixes.
        "enum JobKind { INGEST REINDEX }",
        "enum JobState { QUEUED RUNNING SUCCEEDED FAILED CANCELLED }",
        "type Job { id: ID! kind: JobKind! collection: String! state: JobState! documentsTotal: Long documentsDone: Long! "
        "documentsFailed: Long! chunksDone: Long! bytesTotal: Long bytesDone: Long! percent: Float documentsPerSecond: Float "
        "message: String replica: String! createdAt: DateTime! updatedAt: DateTime! finishedAt: DateTime errors(first: Int = 20): [IngestError!]! }",
        "ingestFiles(collection: String! files: [Upload!]! metadata: JSON = null): Job!",
        "startIngestJob(collection: String! documents: [DocumentInput!]!): Job!",
        "cancelJob(id: ID!): Job!",
        "job(id: ID!): Job",
        "jobs(collection: String = null state: JobState = null first: Int = 20): [Job!]!",
        "jobProgress(id: ID = null collection: String = null): Job!",
        "scalar Upload",
    ):
        assert signatures(name) in sdl, name


def test_readme_quickstart_is_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["python3 bootstrap.py serve", "python3 bootstrap.py test"]
    assert "python3 bootstrap.py test" in (ROOT / ".ci" / "run").read_text()
