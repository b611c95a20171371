"""`citadel documents add | list | remove`: the trusted documents of CITADEL_SERVER__TRUSTED_DOCUMENTS.

A manifest is a JSON object {hash: document}, as GraphQL Codegen's client preset writes
persisted-documents.json and Relay's compiler writes persisted queries (with
`persistConfig.algorithm: "SHA256"`); hashes may carry a `sha256:` prefix. Every hash must be the
sha256 of its document's text (UTF-8), which is how clients name it (`documentId` or the APQ hash).

Works on CITADEL_DATABASE_URL, or the embedded PostgreSQL under the data dir: the one a running
`citadel serve` on that data dir runs, else one started for the command. Servers see a change
within CITADEL_AUTH__KEY_CACHE_SECONDS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Awaitable, TypeVar

import typer

from app.errors import CitadelError

documents_app = typer.Typer(help="Trusted documents: add manifests, list, remove.", no_args_is_help=True)
T = TypeVar("T")


class ManifestError(Exception):
    pass


def read_manifest(path: Path) -> dict[str, str]:
    """{sha256 hex: document} from a manifest file; ManifestError naming what is wrong."""
    from app.graphql.persisted import document_hash

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read a JSON manifest ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise ManifestError(f"{path}: a manifest is a non-empty JSON object {{hash: document}}")
    documents: dict[str, str] = {}
    for name, text in data.items():
        if not isinstance(text, str) or not text.strip():
            raise ManifestError(f"{path}: {name}: the document must be a non-empty string")
        digest = document_hash(text)
        given = str(name).removeprefix("sha256:").lower()
        if given != digest:
            raise ManifestError(
                f"{path}: {name} is not the sha256 of its document (it is sha256:{digest}); "
                'Relay: set persistConfig.algorithm to "SHA256"'
            )
        documents[digest] = text
    return documents


def _run(action: Callable[[Any], Awaitable[T]]) -> T:
    from app.adapters.trusted_documents import TrustedDocumentRepo
    from app.cli_database import run_on_database

    return run_on_database(lambda settings, pool: TrustedDocumentRepo(pool), action)


@documents_app.command("add")
def add(manifests: list[Path] = typer.Argument(..., help="Manifest files: JSON {hash: document}.")) -> None:
    """Register every document of the manifests (those already registered are left as they are)."""
    documents: dict[str, str] = {}
    try:
        for path in manifests:
            documents.update(read_manifest(path))
    except ManifestError as exc:
        typer.echo(f"error (BAD_INPUT): {exc}", err=True)
        raise typer.Exit(2) from None
    source = ",".join(path.name for path in manifests)
    added = _run(lambda repo: repo.add(documents, source))
    typer.echo(f"registered {added} new of {len(documents)} documents")


@documents_app.command("list")
def list_documents(json_output: bool = typer.Option(False, "--json", help="Machine-readable output, texts included.")) -> None:
    """Every registered document: its documentId, when it was added and from which manifest."""
    rows = _run(lambda repo: repo.list())
    if json_output:
        typer.echo(json.dumps(
            [{"documentId": f"sha256:{r.hash}", "document": r.document, "source": r.source,
              "createdAt": r.created_at.isoformat()} for r in rows],
            indent=2,
        ))
        return
    for r in rows:
        first_line = r.document.strip().splitlines()[0][:60]
        typer.echo(f"sha256:{r.hash}  {r.created_at:%Y-%m-%d %H:%M}  {r.source or '-'}  {first_line}")


@documents_app.command("remove")
def remove(document_ids: list[str] = typer.Argument(..., help="documentIds (sha256:<hex>, or the hex alone).")) -> None:
    """Unregister documents: keys bound to trusted documents can no longer run them."""
    from app.graphql.persisted import parse_document_id

    try:
        digests = [parse_document_id(d) for d in document_ids]
    except CitadelError as exc:
        typer.echo(f"error ({exc.code}): {exc.message}", err=True)
        raise typer.Exit(2) from None
    removed = _run(lambda repo: repo.remove(digests))
    typer.echo(f"removed {removed} of {len(digests)} documents")
