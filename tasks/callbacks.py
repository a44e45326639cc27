"""RQ callbacks, run by the worker when a job ends: settle its credits, then schedule its webhook
(`tasks/webhooks.py`). Both are idempotent: the charge is settled once (`credits.settle`), an event is
queued once (`webhooks.schedule`).

rq runs a callback before it writes the job's end (`Worker._finalize_success`, `_finalize_failure`,
`_handle_stopped_job`, rq 3.0). A worker lost between the two leaves the job `started`, and the
recovery sweep runs it again: so a callback must not undo what a run needs. The input image is
dropped by the worker once the end is written (`tasks.worker.InkqWorker.drop_input`), not here.

`on_failure` runs after every failed attempt; only a final one (no retry left) settles.
A job whose queue process dies mid-run runs no callback: the recovery sweep (`tasks/recovery.py`)
settles it as `on_failure` would have, and the API settles any job it finds ended and unsettled the
next time its owner reads it or their balance.
"""
from __future__ import annotations

from . import credits, webhooks


def on_success(job, connection, result) -> None:
    """The charge is final; tell the webhook."""
    credits.settle(connection, job.id, job.meta.get("user"), refund=False)
    webhooks.schedule(job, "completed", connection)


def on_failure(job, connection, exc_type=None, exc_value=None, traceback=None) -> None:
    """A final failure is refunded and reported."""
    if not job.retries_left:
        credits.settle(connection, job.id, job.meta.get("user"), refund=True)
        if not job.meta.get("canceled"):  # the API reported the cancellation
            webhooks.schedule(job, "failed", connection)


def on_stopped(job, connection) -> None:
    """A job stopped by its owner is refunded and reported."""
    credits.settle(connection, job.id, job.meta.get("user"), refund=True)
    webhooks.schedule(job, "canceled", connection)
