"""Prometheus metrics: request counts and latency and submissions (per API process), and, read from
Redis on each scrape so that every API box reports the same totals from every worker service: queue
depths, the oldest waiting job's age, live workers, job outcomes, run and queue-wait times, and
Gemini calls (`tasks/core/metrics.py`).

Every label value comes from a closed set, so no request can add series: the method is one of
`METHODS` or `other`, the endpoint is a route's name (`unknown` when none matched, never the raw
path), and the status is a three-digit code (`other` outside 100-599). The raw method once was a
label: 300 requests with random 7,000-character methods grew the page from 45 KB to 4.3 MB."""
from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tasks.core import metrics as job_metrics
from tasks.core.queues import QUEUE_NAMES

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The request method as a label: a standard one, else `other`."""
    return method if method in METHODS else "other"


def status_label(code: int) -> str:
    """The response status as a label: the code, else `other` outside 100-599."""
    return str(code) if 100 <= code <= 599 else "other"


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
        for key, metric, text in (("oldestWaitingS", "inkq_queue_oldest_waiting_seconds",
                                   "age of the oldest job waiting in the queue (0 when none waits)"),
                                  ("liveWorkers", "inkq_queue_live_workers",
                                   "workers proving themselves alive for the queue, across all worker services")):
            family = GaugeMetricFamily(metric, text, labels=["queue"])
            for name, row in stats.items():
                family.add_metric([name], row[key])
            yield family


class RedisCollector:
    """`inkq_redis_up`: 1 when Redis answers PING (what /readyz checks), 0 when it does not."""

    def __init__(self, redis, max_depth: int):
        self.redis = redis
        self.max_depth = max_depth

    def collect(self):
        """Yield Redis' reachability and each queue's depth limit (QUEUE_MAX_DEPTH)."""
        try:
            up = 1 if self.redis.ping() else 0
        except Exception:
            up = 0
        yield GaugeMetricFamily("inkq_redis_up", "1 when Redis answers the API, else 0", value=up)
        depth = GaugeMetricFamily("inkq_queue_max_depth", "waiting jobs per queue before 503 queue_full",
                                  labels=["queue"])
        for queue in QUEUE_NAMES:
            depth.add_metric([queue], self.max_depth)
        yield depth


class JobCollector:
    """Job outcomes, run and queue-wait times and Gemini calls, summed over every worker service."""

    HISTOGRAMS = (("run", "inkq_job_run_seconds", "time a job attempt ran, per queue", "queue"),
                  ("wait", "inkq_job_wait_seconds", "time from enqueue to the start of an attempt, per queue",
                   "queue"),
                  ("gemini", "inkq_gemini_call_seconds", "Gemini generateContent latency, per outcome", "outcome"))

    def __init__(self, redis):
        self.redis = redis

    def collect(self):
        """Yield the counter and histogram families from one read of the metrics hash."""
        try:
            snap = job_metrics.read(self.redis)
        except Exception:
            return
        jobs = CounterMetricFamily("inkq_jobs", "job attempts by outcome (completed, failed, retried, canceled, expired, "
                                   "recovered, late)", labels=["queue", "outcome"])
        for queue in QUEUE_NAMES:
            for outcome in job_metrics.OUTCOMES:
                jobs.add_metric([queue, outcome], snap.counters.get((queue, outcome), 0))
        yield jobs
        calls = CounterMetricFamily("inkq_gemini_calls", "Gemini calls by outcome (ok, retryable, final)",
                                    labels=["outcome"])
        for outcome in job_metrics.GEMINI_OUTCOMES:
            calls.add_metric([outcome], snap.counters.get(("gemini", outcome), 0))
        yield calls
        for histogram, metric, text, label in self.HISTOGRAMS:
            family = HistogramMetricFamily(metric, text, labels=[label])
            labels = QUEUE_NAMES if label == "queue" else job_metrics.GEMINI_OUTCOMES
            for value in labels:
                h = snap.histograms.get((histogram, value))
                if h is None:
                    h = job_metrics.Histogram([(b, 0) for b in (*job_metrics.BUCKETS[histogram], float("inf"))])
                family.add_metric([value], [(_le(b), n) for b, n in h.buckets], h.sum)
            yield family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


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

    def init_app(self, app: Flask, stats, redis, max_depth: int) -> None:
        """Time every request and serve /metrics."""
        self.registry.register(RedisCollector(redis, max_depth))
        self.registry.register(QueueCollector(stats))
        self.registry.register(JobCollector(redis))

        @app.before_request
        def _start():
            g.metrics_start = time.perf_counter()

        @app.after_request
        def _record(response):
            endpoint = request.endpoint or "unknown"
            if "metrics_start" in g:
                self.latency.labels(endpoint).observe(time.perf_counter() - g.metrics_start)
            self.requests.labels(method_label(request.method), endpoint,
                                status_label(response.status_code)).inc()
            return response

    def render(self) -> Response:
        """The text exposition format."""
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)
