"""API keys with a server secret and revocation, the bootstrap account, web sessions

- api_key.hash_scheme: existing rows keep their plain SHA-256 digest ('sha256'): the key itself
  is needed for the HMAC, so they are rehashed when next used (app.services.accounts), not here.
- api_key.revoked_at.
- account.is_bootstrap: the oldest account named 'bootstrap' (the name NANONET_BOOTSTRAP_API_KEY
  always gave it) becomes the bootstrap account, whose key a new value of the variable rotates.
- web_session: server-side sign-ins to the web form, keyed by the digest of the cookie's token.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_key') as batch_op:
        batch_op.add_column(sa.Column('hash_scheme', sa.String(length=20), nullable=False,
                                      server_default='sha256'))
        batch_op.add_column(sa.Column('revoked_at', sa.DateTime(), nullable=True))
    with op.batch_alter_table('account') as batch_op:
        batch_op.add_column(sa.Column('is_bootstrap', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    # 'sha256' was for the rows already there: the code names the scheme of every new row.
    with op.batch_alter_table('api_key') as batch_op:
        batch_op.alter_column('hash_scheme', existing_type=sa.String(length=20),
                              server_default=None)
    op.execute(
        "UPDATE account SET is_bootstrap = true WHERE id = (SELECT id FROM account"
        " WHERE name = 'bootstrap' ORDER BY created_at, id LIMIT 1)")

    op.create_table(
        'web_session',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('account_id', sa.String(length=32), nullable=False),
        sa.Column('api_key_id', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.Column('revoked_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['account_id'], ['account.id'],
                                name=op.f('fk_web_session_account_id_account'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['api_key_id'], ['api_key.id'],
                                name=op.f('fk_web_session_api_key_id_api_key'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_web_session')),
    )
    with op.batch_alter_table('web_session') as batch_op:
        batch_op.create_index(batch_op.f('ix_web_session_account_id'), ['account_id'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_web_session_api_key_id'), ['api_key_id'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_web_session_expires_at'), ['expires_at'],
                              unique=False)


def downgrade() -> None:
    # A revoked key must not come back to life: its row goes. Rows rehashed since the upgrade
    # hold HMAC digests that the old code cannot check, so those keys stop working (fail
    # closed); keys not used since work as before.
    op.drop_table('web_session')
    op.execute("DELETE FROM api_key WHERE revoked_at IS NOT NULL")
    with op.batch_alter_table('account') as batch_op:
        batch_op.drop_column('is_bootstrap')
    with op.batch_alter_table('api_key') as batch_op:
        batch_op.drop_column('revoked_at')
        batch_op.drop_column('hash_scheme')
