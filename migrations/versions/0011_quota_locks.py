"""a row per tenant that serialises its quota decisions (stored bytes, active jobs)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 16:45:00

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('quota_locks',
                    sa.Column('tenant', sa.String(length=64), nullable=False),
                    sa.Column('taken_at', sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint('tenant'))


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('quota_locks')
