"""Job leases, cancellation and timeouts (filled in by the jobs work of issue 10)

- job.due_at: when a worker could first take the job; a `queued` job unclaimed long after it
  is sent again by the reconciler.
- job.lease_until: renewed by the running worker's heartbeat; past it the reconciler requeues
  or fails the job.
- job.deadline_at: a training's time limit, set when it is claimed.
- job.cancel_requested_at: the handler stops at its next progress report.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

COLUMNS = ('due_at', 'lease_until', 'deadline_at', 'cancel_requested_at')


def upgrade() -> None:
    with op.batch_alter_table('job') as batch_op:
        for column in COLUMNS:
            batch_op.add_column(sa.Column(column, sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job') as batch_op:
        for column in reversed(COLUMNS):
            batch_op.drop_column(column)
