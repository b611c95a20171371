"""Retrieval: a keyword index (BM25 sparse vectors) and chunking per collection.

keyword_index is 'none' (no sparse vectors), 'building' (being backfilled by the reconciler,
keyword_cursor = the last document id done) or 'ready'. Collections that exist before this
revision get theirs built in the background: they start as 'building'.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE collections
            ADD COLUMN keyword_index text NOT NULL DEFAULT 'building'
                CONSTRAINT collections_keyword_index_known CHECK (keyword_index IN ('none', 'building', 'ready')),
            ADD COLUMN keyword_cursor text COLLATE "C",
            ADD COLUMN chunk_max_tokens integer
                CONSTRAINT collections_chunk_max_tokens_positive CHECK (chunk_max_tokens > 0),
            ADD COLUMN chunk_overlap_tokens integer NOT NULL DEFAULT 0
                CONSTRAINT collections_chunk_overlap_tokens_known CHECK (chunk_overlap_tokens >= 0)
        """
    )
    # Existing rows took 'building' above; new rows say what they want.
    op.execute("ALTER TABLE collections ALTER COLUMN keyword_index SET DEFAULT 'none'")


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE collections
            DROP COLUMN chunk_overlap_tokens,
            DROP COLUMN chunk_max_tokens,
            DROP COLUMN keyword_cursor,
            DROP COLUMN keyword_index
        """
    )
