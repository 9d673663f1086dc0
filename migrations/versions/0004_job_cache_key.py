"""job cache key and a preset's alternatives

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 22:20:00

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cache_key', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('alternatives', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.create_index('ix_jobs_tenant_cache_key', ['tenant', 'cache_key'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_tenant_cache_key')
        batch_op.drop_column('alternatives')
        batch_op.drop_column('cache_key')
