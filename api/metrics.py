"""Prometheus metrics: request counts and latency, submissions, and queue depths read on scrape."""
from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST



class QueueCollector:
    """Waiting, active and failed jobs per queue, read from Redis at scrape time."""

    def __init__(self, stats):
        self.stats = stats

    def collect(self):
        """Yield one gauge family per measure."""
        try:
            stats = self.stats()
        except Exception:
            return
        for measure in ("waiting", "active", "scheduled", "failed", "workers"):
            family = GaugeMetricFamily(f"inkq_queue_{measure}", f"{measure} per queue", labels=["queue"])
            for name, row in stats.items():
                family.add_metric([name], row[measure])
            yield family


class Metrics:
    """The API's metrics registry."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("inkq_http_requests", "HTTP requests", ["method", "endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("inkq_http_request_seconds", "HTTP request latency", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.submissions = Counter("inkq_submissions", "Accepted job submissions", ["operation"],
                                   registry=self.registry)

    def submitted(self, operation: str) -> None:
        """Count an accepted submission."""
        self.submissions.labels(operation).inc()

    def init_app(self, app: Flask, stats) -> None:
        """Time every request and serve /metrics."""
        self.registry.register(QueueCollector(stats))

        @app.before_request
        def _start():
            g.metrics_start = time.perf_counter()

        @app.after_request
        def _record(response):
            endpoint = request.endpoint or "unknown"
            if "metrics_start" in g:
                self.latency.labels(endpoint).observe(time.perf_counter() - g.metrics_start)
            self.requests.labels(request.method, endpoint, str(response.status_code)).inc()
            return response

    def render(self) -> Response:
        """The text exposition format."""
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)
