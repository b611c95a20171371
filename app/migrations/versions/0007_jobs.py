"""Jobs: background ingests (startIngestJob, ingestFiles) with their progress, a cursor into their
sources (committed with each batch, so a restarted replica resumes after the last committed batch)
and capped per-document errors.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE jobs (
            id uuid PRIMARY KEY,
            kind text NOT NULL CHECK (kind IN ('INGEST', 'REINDEX')),
            collection text NOT NULL,
            state text NOT NULL CHECK (state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
            replica text NOT NULL,
            principal_kind text NOT NULL,
            key_id text,
            sources jsonb NOT NULL,
            metadata jsonb,
            documents_total bigint,
            documents_done bigint NOT NULL DEFAULT 0,
            documents_failed bigint NOT NULL DEFAULT 0,
            chunks_done bigint NOT NULL DEFAULT 0,
            bytes_total bigint,
            bytes_done bigint NOT NULL DEFAULT 0,
            cursor_source integer NOT NULL DEFAULT 0,
            cursor_offset bigint NOT NULL DEFAULT 0,
            errors jsonb NOT NULL DEFAULT '[]'::jsonb,
            message text,
            run_seconds double precision NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX jobs_active_by_replica ON jobs (replica) WHERE state IN ('QUEUED', 'RUNNING')")
    op.execute("CREATE INDEX jobs_by_collection ON jobs (collection, created_at DESC)")
    op.execute("CREATE INDEX jobs_by_created ON jobs (created_at DESC)")


def downgrade() -> None:
    op.execute("DROP TABLE jobs")
