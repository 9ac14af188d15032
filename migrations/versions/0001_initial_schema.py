"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('account',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_account'))
    )
    op.create_table('api_key',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('account_id', sa.String(length=32), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.id'], name=op.f('fk_api_key_account_id_account'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_key')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_key_key_hash'))
    )
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_key_account_id'), ['account_id'], unique=False)

    op.create_table('nanonet',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('account_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('active_version_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.id'], name=op.f('fk_nanonet_account_id_account'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_nanonet'))
    )
    with op.batch_alter_table('nanonet', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_nanonet_account_id'), ['account_id'], unique=False)

    op.create_table('category',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('nanonet_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['nanonet_id'], ['nanonet.id'], name=op.f('fk_category_nanonet_id_nanonet'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_category')),
    sa.UniqueConstraint('nanonet_id', 'name', name=op.f('uq_category_nanonet_id'))
    )
    with op.batch_alter_table('category', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_category_nanonet_id'), ['nanonet_id'], unique=False)

    op.create_table('image',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('nanonet_id', sa.String(length=32), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('filename', sa.String(length=500), nullable=False),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('format', sa.String(length=10), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['nanonet_id'], ['nanonet.id'], name=op.f('fk_image_nanonet_id_nanonet'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_image')),
    sa.UniqueConstraint('nanonet_id', 'sha256', name=op.f('uq_image_nanonet_id'))
    )
    with op.batch_alter_table('image', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_image_nanonet_id'), ['nanonet_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_image_sha256'), ['sha256'], unique=False)

    op.create_table('job',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('account_id', sa.String(length=32), nullable=False),
    sa.Column('nanonet_id', sa.String(length=32), nullable=True),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('stage', sa.String(length=40), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.id'], name=op.f('fk_job_account_id_account'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['nanonet_id'], ['nanonet.id'], name=op.f('fk_job_nanonet_id_nanonet'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job'))
    )
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_nanonet_id'), ['nanonet_id'], unique=False)
        batch_op.create_index('ix_job_status_created_at', ['status', 'created_at'], unique=False)

    op.create_table('model_version',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('nanonet_id', sa.String(length=32), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('backbone', sa.String(length=60), nullable=False),
    sa.Column('head', sa.String(length=30), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('image_ids', sa.JSON(), nullable=False),
    sa.Column('artifact_path', sa.String(length=500), nullable=False),
    sa.Column('train_seconds', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['nanonet_id'], ['nanonet.id'], name=op.f('fk_model_version_nanonet_id_nanonet'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_version')),
    sa.UniqueConstraint('nanonet_id', 'number', name=op.f('uq_model_version_nanonet_id'))
    )
    with op.batch_alter_table('model_version', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_version_nanonet_id'), ['nanonet_id'], unique=False)

    # nanonet and model_version point at each other: this key can only come once both exist.
    with op.batch_alter_table('nanonet', schema=None) as batch_op:
        batch_op.create_foreign_key(batch_op.f('fk_nanonet_active_version_id_model_version'),
                                    'model_version', ['active_version_id'], ['id'],
                                    ondelete='SET NULL')

    op.create_table('image_label',
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('category_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['category_id'], ['category.id'], name=op.f('fk_image_label_category_id_category'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_id'], ['image.id'], name=op.f('fk_image_label_image_id_image'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('image_id', 'category_id', name=op.f('pk_image_label'))
    )
    with op.batch_alter_table('image_label', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_image_label_category_id'), ['category_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('image_label', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_label_category_id'))

    op.drop_table('image_label')
    with op.batch_alter_table('nanonet', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_nanonet_active_version_id_model_version'),
                                 type_='foreignkey')
    with op.batch_alter_table('model_version', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_version_nanonet_id'))

    op.drop_table('model_version')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('ix_job_status_created_at')
        batch_op.drop_index(batch_op.f('ix_job_nanonet_id'))
        batch_op.drop_index(batch_op.f('ix_job_account_id'))

    op.drop_table('job')
    with op.batch_alter_table('image', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_sha256'))
        batch_op.drop_index(batch_op.f('ix_image_nanonet_id'))

    op.drop_table('image')
    with op.batch_alter_table('category', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_category_nanonet_id'))

    op.drop_table('category')
    with op.batch_alter_table('nanonet', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_nanonet_account_id'))

    op.drop_table('nanonet')
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_key_account_id'))

    op.drop_table('api_key')
    op.drop_table('account')
