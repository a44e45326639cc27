"""Direct uploads (S3 store only): `POST /uploads` hands out a presigned S3 form upload, and
`POST /generate` takes `"upload": "<uploadId>"` in place of `image`, so a photo goes from the client
straight to the bucket and never through the API or Redis.

- An upload is a Redis hash `inkq:upload:<id>` ({user, contentType}, TTL UPLOAD_TTL_S) and one object,
  `up/<id>`, entered in the blob expiry set for UPLOAD_TTL_S: an unused upload is deleted by the blob
  sweep (`tasks/blobs.py`), without the bucket's lifecycle rules.
- Unused uploads per user are capped (`MAX_OPEN_UPLOADS_PER_USER`, default 20): each is a member of
  the user's set `inkq:uploads:<user>`, scored by its expiry, from its creation until a job uses it, its
  object fails its checks, or it expires. The count, the check and the new upload's writes are one Redis
  script, so concurrent requests cannot pass the cap together; over it, 429 `rate_limited` with a
  Retry-After until the oldest unused upload expires. Creating an upload also counts against
  `READ_RATE_LIMIT`. Without both, one key could mint presigned uploads (and Redis entries) without end.
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

import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from flask import Blueprint, current_app, g, jsonify, request
from pydantic import ValidationError

from tasks import blobs as blob_store

from .errors import ApiError, bad_request, not_found
from .guard import require_user
from .limits import limit_reads
from .schemas import UploadRequest
from .submission import ACCEPTED, check_image

bp = Blueprint("uploads", __name__)
POST_TTL_S = 900
HEAD_BYTES = 256 * 1024  # enough for any JPEG, PNG or WebP header Pillow reads to find the size


def upload_record_key(upload_id: str) -> str:
    """Key of an upload's record."""
    return f"inkq:upload:{upload_id}"


def open_uploads_key(user_id: str) -> str:
    """Key of the set of a user's unused uploads, scored by their expiry (epoch seconds)."""
    return f"inkq:uploads:{user_id}"


# KEYS: the user's open uploads, the new upload's record, the blob expiry set.
# ARGV: now, expires at, the cap, upload id, user, content type, TTL (s), the upload's object key.
# Returns {1} when created, {0, the oldest open upload's expiry} when the user is at the cap.
OPEN_UPLOAD = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, oldest[2]}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('HSET', KEYS[2], 'user', ARGV[5], 'contentType', ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[8])
return {1}
"""


@dataclass(frozen=True)
class Upload:
    """A checked upload, ready to be claimed by one job."""

    id: str
    key: str
    mime_type: str
    user: str


def _ctx():
    return current_app.extensions["inkq"]


@bp.post("/uploads")
@require_user
@limit_reads
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
    ttl_s = ctx.settings.upload_ttl_s
    upload_id = uuid.uuid4().hex
    key = blob_store.upload_key(upload_id)
    now = time.time()
    created = ctx.redis.register_script(OPEN_UPLOAD)(
        keys=[open_uploads_key(g.principal.user_id), upload_record_key(upload_id), blob_store.EXPIRY_KEY],
        args=[now, now + ttl_s, ctx.settings.max_open_uploads_per_user, upload_id, g.principal.user_id,
              content_type, ttl_s, key])
    if not int(created[0]):
        wait_s = max(1, math.ceil(float(created[1]) - now))
        raise ApiError(429, "rate_limited",
                       f"You have {ctx.settings.max_open_uploads_per_user} unused uploads: submit a job with one, "
                       f"or wait until the oldest expires.", retry_after=wait_s)
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
        ctx.redis.zrem(open_uploads_key(user_id), upload_id)  # unusable now: its slot is free
        raise
    return Upload(upload_id, key, mime, user_id)


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
    """The job is queued with its own copy: the upload object goes now, and its slot is free."""
    if upload is not None:
        ctx.redis.zrem(open_uploads_key(upload.user), upload.id)
        ctx.blobs.delete(upload.key)
