"""Initial schema: collections, documents, model_status.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE collections (
            name            text PRIMARY KEY,
            model           text NOT NULL,
            model_revision  text NOT NULL,
            dimensions      integer NOT NULL CONSTRAINT collections_dimensions_positive CHECK (dimensions > 0),
            distance        text NOT NULL
                            CONSTRAINT collections_distance_known CHECK (distance IN ('cosine', 'dot', 'euclid')),
            indexed_fields  text[] NOT NULL DEFAULT '{}',
            created_at      timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # id uses the "C" collation: cursor paging by id then orders bytewise, the same on every
    # server whatever its default locale, and the primary key index still serves it.
    op.execute(
        """
        CREATE TABLE documents (
            collection    text NOT NULL REFERENCES collections (name) ON DELETE CASCADE,
            id            text COLLATE "C" NOT NULL,
            text          text NOT NULL,
            metadata      jsonb NOT NULL DEFAULT '{}',
            content_hash  text NOT NULL,
            point_id      uuid NOT NULL,
            status        text NOT NULL
                          CONSTRAINT documents_status_known CHECK (status IN ('pending', 'indexed', 'deleting')),
            created_at    timestamptz NOT NULL DEFAULT now(),
            updated_at    timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (collection, id)
        )
        """
    )
    # The reconciler's queue: small (only rows not yet indexed), read oldest first.
    op.execute(
        "CREATE INDEX documents_unindexed_idx ON documents (updated_at, collection, id) WHERE status <> 'indexed'"
    )
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


def downgrade() -> None:
    op.execute("DROP TABLE model_status")
    op.execute("DROP TABLE documents")
    op.execute("DROP TABLE collections")
