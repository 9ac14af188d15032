"""An index for listing an account's models newest first, a page at once

- ix_model_account_created on model (account_id, created_at): GET /models sorts and pages an
  account's models by it instead of sorting every one of them. The predict path needs no new
  index: the model is read by its primary key (its account compared on the row), its active
  version by model.active_version_id, the primary key of model_version.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_model_account_created', 'model', ['account_id', 'created_at'])


def downgrade() -> None:
    op.drop_index('ix_model_account_created', table_name='model')
