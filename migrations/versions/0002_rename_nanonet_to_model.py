"""rename the nanonet table and every nanonet_id column to model / model_id

The API always said "model"; the tables now say it too. Constraint and index names follow the
naming convention in app/db/base.py, so they are renamed with their columns.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# child table -> the column that, with the parent key, is unique (None: no such constraint)
CHILDREN = {'category': 'name', 'image': 'sha256', 'job': None, 'model_version': 'number'}


def upgrade() -> None:
    _rename(old='nanonet', new='model')


def downgrade() -> None:
    _rename(old='model', new='nanonet')


def _rename(*, old: str, new: str) -> None:
    sqlite = op.get_bind().dialect.name == 'sqlite'
    op.rename_table(old, new)
    with op.batch_alter_table(new, recreate='always' if sqlite else 'never') as batch_op:
        batch_op.drop_index(f'ix_{old}_account_id')
        batch_op.create_index(f'ix_{new}_account_id', ['account_id'], unique=False)
        batch_op.drop_constraint(f'fk_{old}_account_id_account', type_='foreignkey')
        batch_op.create_foreign_key(f'fk_{new}_account_id_account', 'account', ['account_id'],
                                    ['id'], ondelete='CASCADE')
        batch_op.drop_constraint(f'fk_{old}_active_version_id_model_version', type_='foreignkey')
        batch_op.create_foreign_key(f'fk_{new}_active_version_id_model_version',
                                    'model_version', ['active_version_id'], ['id'],
                                    ondelete='SET NULL')
    if not sqlite:  # SQLite keeps the old primary key's name; nothing refers to it
        op.execute(f'ALTER TABLE "{new}" RENAME CONSTRAINT pk_{old} TO pk_{new}')
    for table, unique_with in CHILDREN.items():
        with op.batch_alter_table(table, recreate='always' if sqlite else 'never') as batch_op:
            batch_op.drop_index(f'ix_{table}_{old}_id')
            batch_op.drop_constraint(f'fk_{table}_{old}_id_{old}', type_='foreignkey')
            if unique_with is not None:
                batch_op.drop_constraint(f'uq_{table}_{old}_id', type_='unique')
            batch_op.alter_column(f'{old}_id', new_column_name=f'{new}_id')
        with op.batch_alter_table(table, recreate='always' if sqlite else 'never') as batch_op:
            batch_op.create_index(f'ix_{table}_{new}_id', [f'{new}_id'], unique=False)
            batch_op.create_foreign_key(f'fk_{table}_{new}_id_{new}', new, [f'{new}_id'], ['id'],
                                        ondelete='CASCADE')
            if unique_with is not None:
                batch_op.create_unique_constraint(f'uq_{table}_{new}_id',
                                                  [f'{new}_id', unique_with])
