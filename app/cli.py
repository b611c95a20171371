"""The `citadel` command: serve, doctor, db upgrade, keys, documents, models, schema export."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

cli = typer.Typer(help="Citadel: a GraphQL gateway over text embeddings and vector search.", no_args_is_help=True)
db_cli = typer.Typer(help="Database migrations.", no_args_is_help=True)
schema_cli = typer.Typer(help="The GraphQL schema.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(schema_cli, name="schema")


@cli.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Bind address (default CITADEL_SERVER__HOST)."),
    port: Optional[int] = typer.Option(None, help="Port (default CITADEL_SERVER__PORT)."),
) -> None:
    """Serve the gateway; with nothing configured, on embedded PostgreSQL, Redis and Qdrant Edge."""
    from app.malloc_arenas import limit_malloc_arenas

    limit_malloc_arenas()  # before any thread of the server exists
    import uvicorn

    from app.logging_setup import configure_logging, uvicorn_log_config
    from app.main import create_app
    from app.settings import Settings
    from app.settings_check import warn_unknown_settings

    settings = Settings()
    # The bind address decides whether keys are required by default: settle it first.
    settings.server.host = host or settings.server.host
    settings.server.port = port or settings.server.port
    configure_logging(settings.server.log_level, json=settings.server.log_json)
    warn_unknown_settings()
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_config=uvicorn_log_config(),
        access_log=settings.server.access_log,
        ws="websockets-sansio",
        timeout_graceful_shutdown=10,
    )


@cli.command()
def doctor(json_output: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Check this installation the way an operator would; non-zero exit when a required check fails."""
    from app.doctor import doctor_command

    raise typer.Exit(doctor_command(json_output))


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations to CITADEL_DATABASE_URL (or the embedded PostgreSQL)."""
    from app.adapters.migrations import upgrade
    from app.settings import Settings

    settings = Settings()
    if settings.database_url:
        upgrade(settings.database_url)
    else:
        from app.adapters.embedded import EmbeddedPostgres

        server = EmbeddedPostgres(settings.data_dir)
        server.start()
        try:
            upgrade(server.url)
        finally:
            server.stop()
    typer.echo("database is at the latest migration")


@schema_cli.command("export")
def schema_export(output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout.")) -> None:
    """Print the GraphQL SDL generated from the code (schema.graphql is checked against it)."""
    from app.graphql.schema import schema_sdl

    sdl = schema_sdl()
    if output:
        output.write_text(sdl)
    else:
        sys.stdout.write(sdl)


def _mount_models() -> None:
    from app.cli_documents import documents_app
    from app.cli_keys import keys_app
    from app.cli_models import models_app

    models_app.command("export-onnx")(export_onnx_command)
    cli.add_typer(models_app, name="models")
    cli.add_typer(keys_app, name="keys")
    cli.add_typer(documents_app, name="documents")


def main() -> None:
    _mount_models()
    cli()


def export_onnx_command(
    name: str = typer.Argument("sentence-transformers/all-MiniLM-L6-v2", help="A sentence-transformers model of the catalog."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory to write the ONNX model into."),
) -> None:
    """Turn a sentence-transformers model into an ONNX directory the fastembed backend loads."""
    from app.inference.onnx_export import export_onnx
    from app.inference.sources import local_model_dir
    from app.settings import Settings

    settings = Settings()
    spec = settings.model(name)
    written = export_onnx(local_model_dir(spec), output)
    typer.echo(f"wrote {written}; use it with a catalog entry backend=fastembed, path={output}")
