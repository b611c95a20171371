"""Documents may carry their own vector (DocumentInput.vector): kept with the row, so the
reconciler re-indexes it as given instead of embedding the text.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Little-endian float32, NULL for documents embedded by the collection's model.
    op.execute("ALTER TABLE documents ADD COLUMN vector bytea")


def downgrade() -> None:
    op.execute("ALTER TABLE documents DROP COLUMN vector")
