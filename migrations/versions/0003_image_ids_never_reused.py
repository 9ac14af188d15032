"""image ids are never reused on SQLite (AUTOINCREMENT)

Images can be deleted now, and a version names the images it was trained on by id; without
AUTOINCREMENT SQLite gives the highest deleted id to the next row. PostgreSQL sequences never
reuse ids, so there this migration does nothing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    _recreate_image(autoincrement=True)


def downgrade() -> None:
    _recreate_image(autoincrement=False)


def _recreate_image(*, autoincrement: bool) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    with op.batch_alter_table('image', recreate='always',
                              table_kwargs={'sqlite_autoincrement': autoincrement}):
        pass
