"""image.kept_category_id: an image kept in the review is not flagged again under that label

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

FOREIGN_KEY = 'fk_image_kept_category_id_category'


def upgrade() -> None:
    # Recreating the table on SQLite must keep AUTOINCREMENT (0003).
    with op.batch_alter_table('image', table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.add_column(sa.Column('kept_category_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(FOREIGN_KEY, 'category', ['kept_category_id'], ['id'],
                                    ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('image', table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_constraint(FOREIGN_KEY, type_='foreignkey')
        batch_op.drop_column('kept_category_id')
