"""RQ callbacks, run by the worker when a job ends: settle its credits, drop its input image
(kept only for retries), then schedule its webhook (`tasks/webhooks.py`).

`on_failure` runs after every failed attempt; only a final one (no retry left) settles.
A job whose queue process dies mid-run runs no callback: the recovery sweep (`tasks/recovery.py`)
settles it as `on_failure` would have, and the API settles any job it finds ended and unsettled the
next time its owner reads it or their balance.
"""
from __future__ import annotations

from . import blobs, credits, webhooks


def on_success(job, connection, result) -> None:
    """The charge is final; tell the webhook."""
    credits.settle(connection, job.id, job.meta.get("user"), refund=False)
    blobs.discard_input(blobs.store(connection), job.id)
    webhooks.schedule(job, "completed", connection)


def on_failure(job, connection, exc_type=None, exc_value=None, traceback=None) -> None:
    """A final failure is refunded and reported."""
    if not job.retries_left:
        credits.settle(connection, job.id, job.meta.get("user"), refund=True)
        blobs.discard_input(blobs.store(connection), job.id)
        if not job.meta.get("canceled"):  # the API reported the cancellation
            webhooks.schedule(job, "failed", connection)


def on_stopped(job, connection) -> None:
    """A job stopped by its owner is refunded and reported."""
    credits.settle(connection, job.id, job.meta.get("user"), refund=True)
    blobs.discard_input(blobs.store(connection), job.id)
    webhooks.schedule(job, "canceled", connection)
