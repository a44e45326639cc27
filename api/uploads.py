"""Direct uploads (S3 store only): `POST /uploads` hands out a presigned S3 form upload, and
`POST /generate` takes `"upload": "<uploadId>"` in place of `image`, so a photo goes from the client
straight to the bucket and never through the API or Redis.

- An upload is a Redis hash `inkq:upload:<id>` ({user, contentType, closes}, TTL UPLOAD_TTL_S) and one
  object, `up/<id>`, entered in the blob expiry set: an unused upload is deleted by the blob sweep
  (`tasks/core/blobs.py`) after UPLOAD_TTL_S, without the bucket's lifecycle rules.
- A presigned form cannot be revoked: until it expires, the client may post it again, whatever became
  of its upload. So the form expires `FORM_GRACE_S` (60 s, at most half of UPLOAD_TTL_S) before its
  upload's record (and after at most `POST_TTL_S`), and the object key's expiry entry is never removed
  before the form has expired plus that grace (`closes`): when a job uses the upload or its object is
  refused, the object is deleted at once and its entry made due at `closes` (never earlier; `delete` in
  `tasks/core/blobs.py` leaves upload entries to the sweep). Whatever is posted again is deleted then: no
  object outlives its form by more than the grace. The grace covers clock skew between the API, the
  store and the workers, and an upload the store accepted just before expiry still being written.
- Unused uploads per user are capped (`MAX_OPEN_UPLOADS_PER_USER`, default 20): each is a member of
  the user's set `inkq:uploads:<user>`, scored by its expiry, from its creation until a job uses it, its
  object is refused, or it expires. The count, the check and the new upload's writes are one Redis
  script, so concurrent requests cannot pass the cap together; over it, 429 `rate_limited` with a
  Retry-After until the oldest unused upload expires. Creating an upload also counts against
  `READ_RATE_LIMIT`. Without both, one key could mint presigned uploads (and Redis entries) without end.
- The presigned POST is limited by its policy to exactly its key, 1..MAX_UPLOAD_MB bytes and the
  Content-Type asked for (one of JPEG, PNG, WebP).
- `take` (one Redis script, `CLAIM`) checks that the upload exists and the caller owns it (else 404
  `not_found`, exactly as an unknown id), that it was not refused or used already (409 `conflict`), and
  claims it for the job (its `job` field, so two submissions cannot both use it). It then copies the
  object to the job's input key (`in/<jobId>`, inside the bucket, no bytes through the API) and checks
  the copy, as any image (size 413, magic bytes and header 400/415): the job runs on exactly the bytes
  that were checked, since no form can write an input key, however often the upload's form is posted
  meanwhile. Nothing was uploaded yet: 400, and the upload stays usable. A copy that fails its checks
  makes the upload dead for good (`refused`): a later submission of it is 409, whatever is posted to
  its form since. Nothing is charged before all of this passes.
- If admission or queueing then fails, `release` frees the claim and deletes the copy: the upload can
  be submitted again. Once the job is queued, `used` deletes the upload's object.
- The Idempotency-Key is judged before the upload (`api/jobs.py`): a retry of a submission that used an
  upload gets the original job, as with an inline image.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from flask import Blueprint, current_app, g, jsonify, request
from pydantic import ValidationError

from tasks.core import blobs as blob_store
from tasks.core import keys, scripts

from .errors import ApiError, bad_request, not_found
from .guard import require_user
from .limits import limit_reads
from .schemas import UploadRequest
from .submission import ACCEPTED, check_image

bp = Blueprint("uploads", __name__)
POST_TTL_S = 900
FORM_GRACE_S = 60
HEAD_BYTES = 256 * 1024  # enough for any JPEG, PNG or WebP header Pillow reads to find the size


def form_lifetime(ttl_s: int) -> tuple[int, int]:
    """(seconds the form is valid, seconds until its key may be swept for good) for an upload of ttl_s."""
    grace = max(1, min(FORM_GRACE_S, ttl_s // 2))
    form_s = max(1, min(POST_TTL_S, ttl_s - grace))
    return form_s, form_s + grace


OPEN_UPLOAD = scripts.load("upload_open")
CLAIM = scripts.load("upload_claim")
CLOSE = scripts.load("upload_close")


@dataclass(frozen=True)
class Upload:
    """An upload claimed by one job, its object copied to the job's input key (and, once checked, its type)."""

    id: str
    key: str
    user: str
    closes: float
    input_key: str
    mime_type: str | None = None


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
    form_s, closes_s = form_lifetime(ttl_s)
    upload_id = uuid.uuid4().hex
    key = blob_store.upload_key(upload_id)
    now = time.time()
    created = ctx.redis.register_script(OPEN_UPLOAD)(
        keys=[keys.open_uploads_key(g.principal.user_id), keys.upload_record_key(upload_id), blob_store.EXPIRY_KEY,
              keys.user_uploads_key(g.principal.user_id)],
        args=[now, now + ttl_s, ctx.settings.max_open_uploads_per_user, upload_id, g.principal.user_id,
              content_type, ttl_s, key, now + closes_s, now + max(ttl_s, closes_s)])
    if not int(created[0]):
        wait_s = max(1, math.ceil(float(created[1]) - now))
        raise ApiError(429, "rate_limited",
                       f"You have {ctx.settings.max_open_uploads_per_user} unused uploads: submit a job with one, "
                       f"or wait until the oldest expires.", retry_after=wait_s)
    form = ctx.blobs.presigned_post(key, content_type, ctx.settings.max_upload_bytes, form_s)
    expires = datetime.fromtimestamp(time.time() + form_s, timezone.utc)
    return jsonify({"uploadId": upload_id, "url": form["url"], "fields": form["fields"],
                    "expiresAt": expires.isoformat(timespec="seconds").replace("+00:00", "Z")}), 201


def take(ctx, user_id: str, upload_id: str | None, job_id: str, keep_s: int) -> Upload | None:
    """The caller's upload claimed for this job, copied to the job's input key and checked there; None
    without one. Raises (404, 409, 400, 413, 415, 503) with nothing left claimed or copied."""
    if upload_id is None:
        return None
    if ctx.blobs.kind != "s3" or len(upload_id) > 64:
        raise not_found("No such upload.")
    record = keys.upload_record_key(upload_id)
    claimed = ctx.redis.register_script(CLAIM)(keys=[record], args=[user_id, job_id])
    if int(claimed[0]) == 0:
        raise not_found("No such upload.")
    if int(claimed[0]) == 1:
        raise ApiError(409, "conflict", "This upload was already used by a job.")
    if int(claimed[0]) == 2:
        raise ApiError(409, "conflict", f"This upload was refused: {claimed[1].decode()}. "
                                        "Create a new one with POST /uploads.")
    # A record written before forms had a `closes`: its form expired within POST_TTL_S of its creation.
    closes = float(claimed[1]) if claimed[1] else time.time() + POST_TTL_S + FORM_GRACE_S
    upload = Upload(upload_id, blob_store.upload_key(upload_id), user_id, closes, blob_store.input_key(job_id))
    try:
        copied = ctx.blobs.copy(upload.key, upload.input_key, keep_s)
        found = ctx.blobs.head(upload.input_key, HEAD_BYTES) if copied else None
        if found is None:
            raise bad_request("Nothing was uploaded for this upload id (POST the file to its url first).")
    except Exception:
        release(ctx, upload, job_id)
        raise
    size, head = found
    try:
        if size > ctx.settings.max_upload_bytes:
            raise ApiError(413, "payload_too_large",
                           f"The image is larger than {ctx.settings.max_upload_bytes // (1024 * 1024)} MB.")
        mime = check_image(head, ctx.settings.max_pixels, ctx.settings.max_upload_bytes)
    except ApiError as refusal:
        _refuse(ctx, upload, refusal.message)
        raise
    return replace(upload, mime_type=mime)


def _close(ctx, upload: Upload, why: str = "") -> None:
    """The upload serves no job any more (refused, with why, or used): its slot is free, and its key is
    swept once its form has expired (`CLOSE`)."""
    ctx.redis.register_script(CLOSE)(
        keys=[keys.upload_record_key(upload.id), keys.open_uploads_key(upload.user), blob_store.EXPIRY_KEY],
        args=[why, upload.id, upload.key, upload.closes])


def _refuse(ctx, upload: Upload, why: str) -> None:
    """Its copy failed its checks: the upload is dead for good; its object and the copy go now."""
    _close(ctx, upload, why.rstrip(".") or "refused")
    ctx.blobs.delete(upload.input_key, upload.key)


def release(ctx, upload: Upload | None, job_id: str) -> None:
    """Free an upload whose job could not be queued, so it can be submitted again; its copy goes."""
    if upload is None:
        return
    record = keys.upload_record_key(upload.id)
    if ctx.redis.hget(record, "job") == job_id.encode():
        ctx.redis.hdel(record, "job")
    ctx.blobs.delete(upload.input_key)


def used(ctx, upload: Upload | None) -> None:
    """The job is queued with its own copy: the upload object goes now, and its slot is free."""
    if upload is not None:
        _close(ctx, upload)
        ctx.blobs.delete(upload.key)
