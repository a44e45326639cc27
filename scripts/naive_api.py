"""The naive baseline for `make bench`: the same contract done the obvious way, to measure inkq against.

What makes it naive, on purpose:
- the image travels inside the job payload (base64 in the rq job's arguments, so in its Redis hash);
- every status read is `Job.fetch` plus `job.return_value()`, several round trips, a full RQ job built;
- an event stream is a loop of `job.refresh()` and `sleep(0.5)` holding its server worker;
- it is served by gunicorn with 2 sync workers.
It checks what the contract checks on a submission (a bearer key, a real image within the size limits,
the operation) and answers status objects with the contract's fields, so both servers do the same work
for a client. Not part of the product; only scripts/bench_read.py runs it:

    gunicorn -w 2 -k sync 'scripts.naive_api:app'          (API)
    rq worker-pool stencil-generation -n 5 -w rq.worker.SimpleWorker ... (the job below)
"""
from __future__ import annotations

import base64
import io
import json
import os
import time
import uuid

from flask import Flask, Response, jsonify, request
from PIL import Image
from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

WORDS = {"queued": "waiting", "deferred": "waiting", "scheduled": "waiting", "started": "active",
         "finished": "completed", "failed": "failed", "stopped": "canceled", "canceled": "canceled"}
MAX_BYTES, MAX_PIXELS = 10 * 1024 * 1024, 40_000_000

app = Flask(__name__)
redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
keys = dict(pair.split(":", 1) for pair in os.environ.get("API_KEYS", "").split(",") if pair)
queue = Queue("stencil-generation", connection=redis, serializer=JSONSerializer)


def user():
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    return keys.get(token)


def error(status, code, message):
    return jsonify({"error": message, "code": code}), status


def describe(job: Job, host_url: str) -> dict:
    status = WORDS.get(job.get_status(), "waiting")
    result = None
    if status == "completed":
        value = job.return_value() or {}
        result = {k: v for k, v in value.items() if k != "png"}
        result["image"] = f"{host_url}result/{job.id}"
    return {"jobId": job.id, "queue": job.origin, "operation": job.meta.get("operation"), "status": status,
            "progress": 100 if status == "completed" else job.meta.get("progress", 0),
            "stage": job.meta.get("stage", ""), "result": result, "error": None,
            "attempts": 0, "createdAt": job.created_at.isoformat(), "startedAt": None,
            "endedAt": job.ended_at.isoformat() if job.ended_at else None}


def owned(job_id):
    try:
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return None
    return job if job.meta.get("user") == user() else None


@app.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@app.post("/generate")
def generate():
    if user() is None:
        return error(401, "unauthorized", "Missing or unknown API key.")
    body = request.get_json(silent=True) or {}
    if body.get("operation", "stencil") != "stencil":
        return error(400, "invalid_request", "Only stencil is supported here.")
    try:
        data = base64.b64decode(body["image"], validate=True)
        if len(data) > MAX_BYTES:
            return error(413, "payload_too_large", "The image is too large.")
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ("JPEG", "PNG", "WEBP") or img.width * img.height > MAX_PIXELS:
                return error(400, "invalid_request", "Not an accepted image.")
    except (KeyError, ValueError, OSError):
        return error(400, "invalid_request", "`image` must be a base64 JPEG, PNG or WebP.")
    job = queue.enqueue("scripts.naive_api.stencil_job", body["image"], job_id=uuid.uuid4().hex,
                        meta={"user": user(), "operation": "stencil", "progress": 0}, result_ttl=86400)
    return jsonify({"jobId": job.id, "queue": queue.name, "operation": "stencil", "status": "waiting",
                    "statusUrl": f"/status/{job.id}"}), 202


@app.get("/status/<job_id>")
def status(job_id):
    job = owned(job_id)
    if job is None:
        return error(404, "not_found", "No such job.")
    return jsonify(describe(job, request.host_url))


@app.get("/status/<job_id>/events")
def events(job_id):
    job = owned(job_id)
    if job is None:
        return error(404, "not_found", "No such job.")

    host_url = request.host_url

    def stream():
        last = None
        while True:
            job.refresh()
            body = describe(job, host_url)
            if body != last:
                yield f"event: status\ndata: {json.dumps(body)}\n\n"
                last = body
            if body["status"] in ("completed", "failed", "canceled"):
                return
            time.sleep(0.5)
    return Response(stream(), mimetype="text/event-stream")


def stencil_job(image_b64: str) -> dict:
    """The job: decode the image from the payload, trace it with the local engine, return the PNG."""
    from rq import get_current_job

    from tasks.stencil import stencil

    job = get_current_job()
    job.meta["progress"], job.meta["stage"] = 10, "tracing"
    job.save_meta()
    img = Image.open(io.BytesIO(base64.b64decode(image_b64)))
    out = stencil(img.convert("RGB"))
    buf = io.BytesIO()
    out.save(buf, "PNG")
    return {"png": base64.b64encode(buf.getvalue()).decode(), "width": out.width, "height": out.height}
