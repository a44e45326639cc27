"""Webhooks: when a job ends, POST its final status to the `webhookUrl` given at submission.

The body is JSON; `X-Inkq-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">` signed
with WEBHOOK_SECRET lets the receiver check origin and freshness. Addresses that resolve to private,
loopback, link-local or reserved ranges are refused (at submission and again at delivery, against
DNS rebinding) unless WEBHOOK_ALLOW_PRIVATE is true. Delivery is tried 3 times with short timeouts
and never fails the job.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import time
from urllib.parse import urlsplit

import requests

log = logging.getLogger("inkq.webhooks")
TIMEOUT_S = 5
ATTEMPTS = 3


class WebhookRefused(ValueError):
    """The URL may not be called."""


def check_url(url: str, allow_private: bool) -> None:
    """Refuse URLs that are not http(s) or that resolve to a private address (unless allowed)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("webhookUrl must be an http or https URL with a host.")
    if parts.username or parts.password:
        raise WebhookRefused("webhookUrl must not carry credentials.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError):
        raise WebhookRefused("webhookUrl's host does not resolve.") from None
    if allow_private:
        return
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            raise WebhookRefused("webhookUrl resolves to a private or reserved address.")


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header value for a body."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def payload(job, status: str) -> dict:
    """What a webhook receives."""
    meta = job.meta
    return {"jobId": job.id, "queue": job.origin, "operation": meta.get("operation"), "status": status,
            "error": meta.get("error") if status != "completed" else None,
            "attempts": int(meta.get("attempts", 0)), "statusUrl": f"/status/{job.id}",
            "resultUrl": f"/result/{job.id}" if status == "completed" else None}


def deliver(job, status: str, env=None) -> bool:
    """POST the job's final status to its webhookUrl, if it has one; True when delivered."""
    env = os.environ if env is None else env
    url = (job.args[0].get("params", {}) if job.args else {}).get("webhookUrl")
    if not url:
        return False
    allow_private = str(env.get("WEBHOOK_ALLOW_PRIVATE", "")).lower() in ("1", "true", "yes", "on")
    try:
        check_url(url, allow_private)
    except WebhookRefused as exc:
        log.warning("webhook for job %s not sent: %s", job.id, exc, extra={"jobId": job.id})
        return False
    body = json.dumps(payload(job, status)).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "inkq-webhooks"}
    if env.get("WEBHOOK_SECRET"):
        headers["X-Inkq-Signature"] = sign(env["WEBHOOK_SECRET"], body, int(time.time()))
    where = {"jobId": job.id, "queue": job.origin}
    for attempt in range(ATTEMPTS):
        started = time.perf_counter()
        try:
            response = requests.post(url, data=body, headers=headers, timeout=TIMEOUT_S, allow_redirects=False)
            took = {"durationMs": round((time.perf_counter() - started) * 1000, 1), "delivery": attempt + 1}
            if response.status_code < 300:
                log.info("webhook for job %s delivered (%s)", job.id, response.status_code, extra={**where, **took})
                return True
            log.warning("webhook for job %s answered %s", job.id, response.status_code, extra={**where, **took})
        except requests.RequestException as exc:
            log.warning("webhook for job %s failed: %s", job.id, exc.__class__.__name__,
                        extra={**where, "delivery": attempt + 1})
        time.sleep(0.5 * 2 ** attempt)
    return False
