"""Collections moved to a new model with zero downtime (reindexCollection).

A collection's vectors live in the store collection `vectors` (NULL: the collection's own name).
While a REINDEX job builds the next version, `next_*` say what it is: writes go to both versions,
reads to the current one, and the job switches the two in one UPDATE at the end.
`reindex_backlog` holds documents a writer indexed without the next version's vectors (it read
the collection before the job began); the job indexes them before it switches. `jobs.cursor_id`
is a REINDEX job's place: the last document id it rebuilt.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE collections
            ADD COLUMN vectors text,
            ADD COLUMN next_vectors text,
            ADD COLUMN next_model text,
            ADD COLUMN next_model_revision text,
            ADD COLUMN next_dimensions integer CONSTRAINT collections_next_dimensions_positive CHECK (next_dimensions > 0),
            ADD COLUMN next_chunk_max_tokens integer,
            ADD COLUMN next_chunk_overlap_tokens integer NOT NULL DEFAULT 0
        """
    )
    op.execute(
        """
        CREATE TABLE reindex_backlog (
            collection text NOT NULL REFERENCES collections (name) ON DELETE CASCADE,
            id text COLLATE "C" NOT NULL,
            PRIMARY KEY (collection, id)
        )
        """
    )
    op.execute("ALTER TABLE jobs ADD COLUMN cursor_id text COLLATE \"C\"")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs DROP COLUMN cursor_id")
    op.execute("DROP TABLE reindex_backlog")
    op.execute(
        """
        ALTER TABLE collections
            DROP COLUMN next_chunk_overlap_tokens, DROP COLUMN next_chunk_max_tokens, DROP COLUMN next_dimensions,
            DROP COLUMN next_model_revision, DROP COLUMN next_model, DROP COLUMN next_vectors, DROP COLUMN vectors
        """
    )
