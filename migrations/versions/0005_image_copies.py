"""image.copy: the same bytes may be uploaded to two categories, so the review can list them

Until now a second upload of the same bytes to another category was refused (409
label_conflict). It is now kept as a second row, a copy, and the review lists the two among
its duplicates. The unique key moves from (model_id, sha256) to (model_id, sha256, copy).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# The naming convention names a unique key after its first column only.
UNIQUE = 'uq_image_model_id'


def upgrade() -> None:
    # Recreating the table on SQLite must keep AUTOINCREMENT (0003).
    with op.batch_alter_table('image', table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.add_column(sa.Column('copy', sa.Integer(), nullable=False, server_default='0'))
        batch_op.drop_constraint(UNIQUE, type_='unique')
        batch_op.create_unique_constraint(UNIQUE, ['model_id', 'sha256', 'copy'])


def downgrade() -> None:
    # Copies have no place in the old schema: only the first row of each content stays.
    op.execute('DELETE FROM image_label WHERE image_id IN (SELECT id FROM image WHERE copy > 0)')
    op.execute('DELETE FROM image WHERE copy > 0')
    with op.batch_alter_table('image', table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_constraint(UNIQUE, type_='unique')
        batch_op.create_unique_constraint(UNIQUE, ['model_id', 'sha256'])
        batch_op.drop_column('copy')
