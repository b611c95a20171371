"""Trusted documents: the GraphQL documents a deployment allows (CITADEL_SERVER__TRUSTED_DOCUMENTS),
registered by `citadel documents add` and named by their sha256.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE trusted_documents (
            hash text PRIMARY KEY CHECK (hash ~ '^[0-9a-f]{64}$'),
            document text NOT NULL,
            source text,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE trusted_documents")
