"""The four queues: which operation each serves, its job function, the variable of its concurrency, its
timeout and retries (and the internal `webhooks` queue the worker service also runs).

This module is imported by the API, so it holds plain data and no image or provider code. The
concurrency defaults are in `tasks.core.settings.DEFAULTS`, with every other default.
"""
from __future__ import annotations

from dataclasses import dataclass

SERIALIZER = "rq.serializers.JSONSerializer"


@dataclass(frozen=True)
class QueueSpec:
    """One operation's queue."""

    operation: str
    name: str
    function: str
    concurrency_env: str
    timeout_s: int
    max_retries: int


QUEUES: dict[str, QueueSpec] = {
    spec.operation: spec
    for spec in (
        QueueSpec("stencil", "stencil-generation", "tasks.jobs.stencil", "CONCURRENCY_STENCIL", 120, 3),
        QueueSpec("enhance", "enhance", "tasks.jobs.enhance", "CONCURRENCY_ENHANCE", 180, 3),
        QueueSpec("ia-gen", "ia-gen", "tasks.jobs.ia_gen", "CONCURRENCY_IA_GEN", 180, 3),
        QueueSpec("color-match", "color-match", "tasks.jobs.color_match", "CONCURRENCY_COLOR_MATCH", 60, 2),
    )
}

QUEUE_NAMES = [spec.name for spec in QUEUES.values()]

# Not an operation: webhook deliveries (tasks/webhooks.py), run by the worker service beside the four.
WEBHOOKS = QueueSpec("webhook", "webhooks", "tasks.webhooks.send", "CONCURRENCY_WEBHOOKS", 30, 0)
WORKER_QUEUES = [*QUEUES.values(), WEBHOOKS]
BY_QUEUE = {spec.name: spec for spec in QUEUES.values()}
