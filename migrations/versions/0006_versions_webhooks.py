"""Versions with a life of their own, webhooks, and job parameters

- model_version: status (training|ready|failed) and its error, the job that made it, what it
  was trained on by content (image_hashes, image_labels), what changed since the version
  before, how activation went, finished_at; backbone and head are unknown while it trains.
- job.params: what a job was asked to do (the activation policy, a batch's inputs).
- webhook and webhook_delivery.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('model_version') as batch_op:
        batch_op.add_column(sa.Column('status', sa.String(length=20), nullable=False,
                                      server_default='ready'))
        batch_op.add_column(sa.Column('error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('job_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('image_hashes', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('image_labels', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('changes', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('activation', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('finished_at', sa.DateTime(), nullable=True))
        batch_op.alter_column('backbone', existing_type=sa.String(length=60), nullable=True)
        batch_op.alter_column('head', existing_type=sa.String(length=30), nullable=True)
        batch_op.create_index(batch_op.f('ix_model_version_job_id'), ['job_id'], unique=False)
    with op.batch_alter_table('job') as batch_op:
        batch_op.add_column(sa.Column('params', sa.JSON(), nullable=True))

    op.create_table(
        'webhook',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('account_id', sa.String(length=32), nullable=False),
        sa.Column('model_id', sa.String(length=32), nullable=True),
        sa.Column('url', sa.String(length=2000), nullable=False),
        sa.Column('events', sa.JSON(), nullable=False),
        sa.Column('secret', sa.String(length=100), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('description', sa.String(length=500), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['account_id'], ['account.id'],
                                name=op.f('fk_webhook_account_id_account'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['model_id'], ['model.id'],
                                name=op.f('fk_webhook_model_id_model'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook')),
    )
    with op.batch_alter_table('webhook') as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_webhook_model_id'), ['model_id'], unique=False)
    op.create_table(
        'webhook_delivery',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('webhook_id', sa.String(length=32), nullable=False),
        sa.Column('event', sa.String(length=60), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('attempts', sa.JSON(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['webhook_id'], ['webhook.id'],
                                name=op.f('fk_webhook_delivery_webhook_id_webhook'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_delivery')),
    )
    with op.batch_alter_table('webhook_delivery') as batch_op:
        batch_op.create_index('ix_webhook_delivery_webhook_created', ['webhook_id', 'created_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('webhook_delivery') as batch_op:
        batch_op.drop_index('ix_webhook_delivery_webhook_created')
    op.drop_table('webhook_delivery')
    with op.batch_alter_table('webhook') as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_model_id'))
        batch_op.drop_index(batch_op.f('ix_webhook_account_id'))
    op.drop_table('webhook')
    with op.batch_alter_table('job') as batch_op:
        batch_op.drop_column('params')
    # Versions that never became ready have no place in the old schema.
    op.execute("DELETE FROM model_version WHERE status <> 'ready'")
    with op.batch_alter_table('model_version') as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_version_job_id'))
        batch_op.alter_column('head', existing_type=sa.String(length=30), nullable=False)
        batch_op.alter_column('backbone', existing_type=sa.String(length=60), nullable=False)
        for column in ('finished_at', 'activation', 'changes', 'image_labels', 'image_hashes',
                       'job_id', 'error', 'status'):
            batch_op.drop_column(column)
