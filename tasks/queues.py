"""The four queues: which operation each serves, its job function, concurrency, timeout and retries
(and the internal `webhooks` queue the worker service also runs).

This module is imported by the API, so it holds plain data and no image or provider code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .settings import env_int

SERIALIZER = "rq.serializers.JSONSerializer"


@dataclass(frozen=True)
class QueueSpec:
    """One operation's queue."""

    operation: str
    name: str
    function: str
    concurrency_env: str
    default_concurrency: int
    timeout_s: int
    max_retries: int

    def concurrency(self, env: Mapping[str, str]) -> int:
        """Worker processes for this queue, from its CONCURRENCY_* variable."""
        return max(1, env_int(env, self.concurrency_env, self.default_concurrency))


QUEUES: dict[str, QueueSpec] = {
    spec.operation: spec
    for spec in (
        QueueSpec("stencil", "stencil-generation", "tasks.jobs.stencil", "CONCURRENCY_STENCIL", 5, 120, 3),
        QueueSpec("enhance", "enhance", "tasks.jobs.enhance", "CONCURRENCY_ENHANCE", 3, 180, 3),
        QueueSpec("ia-gen", "ia-gen", "tasks.jobs.ia_gen", "CONCURRENCY_IA_GEN", 3, 180, 3),
        QueueSpec("color-match", "color-match", "tasks.jobs.color_match", "CONCURRENCY_COLOR_MATCH", 10, 60, 2),
    )
}

QUEUE_NAMES = [spec.name for spec in QUEUES.values()]

# Not an operation: webhook deliveries (tasks/webhooks.py), run by the worker service beside the four.
WEBHOOKS = QueueSpec("webhook", "webhooks", "tasks.webhooks.send", "CONCURRENCY_WEBHOOKS", 2, 30, 0)
WORKER_QUEUES = [*QUEUES.values(), WEBHOOKS]
BY_QUEUE = {spec.name: spec for spec in QUEUES.values()}
