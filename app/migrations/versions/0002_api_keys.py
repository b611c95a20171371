"""API keys: only a hash of each secret is stored, with a public id and a short prefix.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE api_keys (
            id               text PRIMARY KEY,
            name             text NOT NULL,
            prefix           text NOT NULL,
            secret_hash      text NOT NULL UNIQUE,
            scopes           text[] NOT NULL,
            collections      text[],
            filter           jsonb,
            rate_per_second  double precision
                             CONSTRAINT api_keys_rate_positive CHECK (rate_per_second IS NULL OR rate_per_second > 0),
            created_at       timestamptz NOT NULL DEFAULT now(),
            last_used_at     timestamptz,
            revoked_at       timestamptz
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE api_keys")
