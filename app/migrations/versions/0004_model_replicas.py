"""Model states per replica, and replica heartbeats (Downloads across replicas).

model_status held one row per model, written by whichever replica spoke last; model_replicas keeps
the last state of each model on each replica, and replica_heartbeats says which replicas are alive.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE model_replicas (
            model         text NOT NULL,
            replica       text NOT NULL,
            state         text NOT NULL,
            attempts      integer NOT NULL,
            max_attempts  integer NOT NULL,
            bytes_done    bigint NOT NULL DEFAULT 0,
            bytes_total   bigint,
            device        text,
            last_error    text,
            fallback_for  text,
            updated_at    timestamptz NOT NULL,
            PRIMARY KEY (model, replica)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE replica_heartbeats (
            replica     text PRIMARY KEY,
            started_at  timestamptz NOT NULL DEFAULT now(),
            seen_at     timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # The states of the old table's writer are not attributable to a replica: they are dropped,
    # and every replica writes its own rows again when it starts.
    op.execute("DROP TABLE model_status")


def downgrade() -> None:
    op.execute(
        """
        CREATE TABLE model_status (
            name          text PRIMARY KEY,
            state         text NOT NULL,
            attempts      integer NOT NULL,
            max_attempts  integer NOT NULL,
            bytes_done    bigint NOT NULL DEFAULT 0,
            bytes_total   bigint,
            last_error    text,
            fallback_for  text,
            updated_at    timestamptz NOT NULL
        )
        """
    )
    op.execute("DROP TABLE replica_heartbeats")
    op.execute("DROP TABLE model_replicas")
