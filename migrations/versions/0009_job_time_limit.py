"""a job's own time limit; a shutting-down worker's request to hand a job back

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 00:20:00

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('time_limit_s', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('handback_requested', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('handback_requested')
        batch_op.drop_column('time_limit_s')
