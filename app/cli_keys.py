"""`citadel keys create | list | revoke`: API keys from the terminal (same KeyService as GraphQL).

Works on CITADEL_DATABASE_URL, or the embedded PostgreSQL under the data dir: the one a running
`citadel serve` on that data dir runs, else one started for the command. The secret is printed
once, on stdout only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Awaitable, Optional, TypeVar

import typer

from app.domain.access import Principal, Scope

keys_app = typer.Typer(help="API keys: create (the secret is shown once), list, revoke.", no_args_is_help=True)
CLI_PRINCIPAL = Principal(kind="cli", key_id="cli", name="citadel keys", scopes=frozenset({Scope.ADMIN}))
T = TypeVar("T")


def _run(action: Callable[[Any], Awaitable[T]]) -> T:
    from app.adapters.api_keys import ApiKeyRepo
    from app.cli_database import run_on_database
    from app.services.keys import KeyService

    return run_on_database(lambda settings, pool: KeyService(settings, ApiKeyRepo(pool)), action)


def _describe(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "scopes": list(row.scopes),
        "collections": None if row.collections is None else list(row.collections),
        "filter": row.filter,
        "ratePerSecond": row.rate_per_second,
        "createdAt": row.created_at.isoformat(),
        "lastUsedAt": row.last_used_at.isoformat() if row.last_used_at else None,
        "revoked": row.revoked,
    }


@keys_app.command("create")
def create(
    name: str = typer.Option(..., "--name", help="What the key is for (shown in apiKeys and audit lines)."),
    scope: list[str] = typer.Option(..., "--scope", help="READ, WRITE or ADMIN; repeat for several."),
    collection: Optional[list[str]] = typer.Option(None, "--collection", help="Grant only this collection; repeat. Default: every collection."),
    filter: Optional[str] = typer.Option(None, "--filter", help='Tenant filter (JSON), e.g. \'{"tenant": {"eq": "acme"}}\'.'),
    rate: Optional[float] = typer.Option(None, "--rate", help="Requests per second (default: no limit)."),
) -> None:
    """Create a key and print its secret (once: only a hash is stored)."""
    from app.services.keys import KeyRequest

    try:
        parsed_filter = json.loads(filter) if filter is not None else None
    except json.JSONDecodeError as exc:
        typer.echo(f"error (BAD_INPUT): --filter is not JSON: {exc}", err=True)
        raise typer.Exit(2) from None
    request = KeyRequest(name, [s.upper() for s in scope], collection or None, parsed_filter, rate)
    row, secret = _run(lambda keys: keys.create(request, CLI_PRINCIPAL))
    typer.echo(json.dumps({"key": _describe(row), "secret": secret}, indent=2))
    typer.echo("The secret is shown only now; store it safely.", err=True)


@keys_app.command("list")
def list_keys(json_output: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Every key, revoked ones included; never a secret."""
    rows = _run(lambda keys: keys.list(CLI_PRINCIPAL))
    if json_output:
        typer.echo(json.dumps([_describe(r) for r in rows], indent=2))
        return
    for r in rows:
        state = "revoked" if r.revoked else "active"
        scopes = ",".join(r.scopes)
        grants = "all collections" if r.collections is None else ",".join(r.collections)
        typer.echo(f"{r.id}  {r.prefix}…  {state:7}  {scopes:16}  {grants}  {r.name}")


@keys_app.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="The key's id (see `citadel keys list`).")) -> None:
    """Revoke a key: refused at once by this command's database (servers: within their key cache time)."""
    changed = _run(lambda keys: keys.revoke(key_id, CLI_PRINCIPAL))
    typer.echo(f"revoked {key_id}" if changed else f"{key_id} was already revoked")
