"""Direct uploads (S3 store only): `POST /uploads` hands out a presigned S3 form upload, and
`POST /generate` takes `"upload": "<uploadId>"` in place of `image`, so a photo goes from the client
straight to the bucket and never through the API or Redis.

- An upload is a Redis hash `inkq:upload:<id>` ({user, contentType}, TTL UPLOAD_TTL_S) and one object,
  `up/<id>`, entered in the blob expiry set for UPLOAD_TTL_S: an unused upload is deleted by the blob
  sweep (`tasks/blobs.py`), without the bucket's lifecycle rules.
- The presigned POST is limited by its policy to 1..MAX_UPLOAD_MB bytes and to the Content-Type asked for
  (one of JPEG, PNG, WebP), and expires after at most `POST_TTL_S`.
- Before a job is queued the API checks, in this order: the upload exists and the caller owns it (else 404
  `not_found`, exactly as an unknown id); it was not used already (409 `conflict`); the object exists (400);
  its size (413); its magic bytes and header, as for any image (`submission.check_image`, 400/415). An
  object that fails its checks is deleted at once. Nothing is charged before all of them pass.
- An upload serves one job: `claim` sets the hash's `job` field with HSETNX, atomically, after the
  checks and before admission; if admission or queueing then fails, `release` frees it again. The job's
  input is a copy made inside the bucket (`in/<jobId>`, no bytes through the API), so an input is always
  found at the same key, and the upload object is deleted once the job is queued.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from flask import Blueprint, current_app, g, jsonify, request
from pydantic import ValidationError

from tasks import blobs as blob_store

from .errors import ApiError, bad_request, not_found
from .guard import require_user
from .schemas import UploadRequest
from .submission import ACCEPTED, check_image

bp = Blueprint("uploads", __name__)
POST_TTL_S = 900
HEAD_BYTES = 256 * 1024  # enough for any JPEG, PNG or WebP header Pillow reads to find the size


def upload_record_key(upload_id: str) -> str:
    """Key of an upload's record."""
    return f"inkq:upload:{upload_id}"


@dataclass(frozen=True)
class Upload:
    """A checked upload, ready to be claimed by one job."""

    id: str
    key: str
    mime_type: str


def _ctx():
    return current_app.extensions["inkq"]


@bp.post("/uploads")
@require_user
def create_upload():
    """A presigned form upload for one image (S3 store only; otherwise 404)."""
    ctx = _ctx()
    if ctx.blobs.kind != "s3":
        raise not_found("Direct uploads need the S3 image store (BLOB_STORE=s3://...).")
    try:
        asked = UploadRequest.model_validate(request.get_json(silent=True, force=True))
    except ValidationError:
        raise bad_request('Send {"contentType": "image/jpeg" | "image/png" | "image/webp"}.') from None
    content_type = asked.contentType.strip().lower()
    if content_type not in ACCEPTED.values():
        raise ApiError(415, "unsupported_media_type", "Uploads accept JPEG, PNG or WebP images only.")
    ttl_s = max(1, int(ctx.settings.env.get("UPLOAD_TTL_S") or 3600))
    upload_id = uuid.uuid4().hex
    key = blob_store.upload_key(upload_id)
    ctx.redis.hset(upload_record_key(upload_id), mapping={"user": g.principal.user_id, "contentType": content_type})
    ctx.redis.expire(upload_record_key(upload_id), ttl_s)
    ctx.redis.zadd(blob_store.EXPIRY_KEY, {key: time.time() + ttl_s})
    post_ttl_s = min(POST_TTL_S, ttl_s)
    form = ctx.blobs.presigned_post(key, content_type, ctx.settings.max_upload_bytes, post_ttl_s)
    expires = datetime.fromtimestamp(time.time() + post_ttl_s, timezone.utc)
    return jsonify({"uploadId": upload_id, "url": form["url"], "fields": form["fields"],
                    "expiresAt": expires.isoformat(timespec="seconds").replace("+00:00", "Z")}), 201


def inspect(ctx, user_id: str, upload_id: str | None) -> Upload | None:
    """The caller's unused upload, its object checked like any submitted image; None without one."""
    if upload_id is None:
        return None
    record = ctx.redis.hgetall(upload_record_key(upload_id)) if ctx.blobs.kind == "s3" and len(upload_id) <= 64 else {}
    if record.get(b"user", b"").decode() != user_id:
        raise not_found("No such upload.")
    if record.get(b"job"):
        raise ApiError(409, "conflict", "This upload was already used by a job.")
    key = blob_store.upload_key(upload_id)
    found = ctx.blobs.head(key, HEAD_BYTES)
    if found is None:
        raise bad_request("Nothing was uploaded for this upload id (POST the file to its url first).")
    size, head = found
    try:
        if size > ctx.settings.max_upload_bytes:
            raise ApiError(413, "payload_too_large",
                           f"The image is larger than {ctx.settings.max_upload_bytes // (1024 * 1024)} MB.")
        mime = check_image(head, ctx.settings.max_pixels, ctx.settings.max_upload_bytes)
    except ApiError:
        ctx.blobs.delete(key)
        raise
    return Upload(upload_id, key, mime)


def claim(ctx, upload: Upload | None, job_id: str) -> None:
    """Make the upload this job's, atomically; 409 if another job took it first."""
    if upload is not None and not ctx.redis.hsetnx(upload_record_key(upload.id), "job", job_id):
        raise ApiError(409, "conflict", "This upload was already used by a job.")


def release(ctx, upload: Upload | None, job_id: str) -> None:
    """Free an upload whose job could not be queued, so it can be submitted again."""
    if upload is None:
        return
    record = upload_record_key(upload.id)
    if ctx.redis.hget(record, "job") == job_id.encode():
        ctx.redis.hdel(record, "job")


def used(ctx, upload: Upload | None) -> None:
    """The job is queued with its own copy: the upload object goes now."""
    if upload is not None:
        ctx.blobs.delete(upload.key)
