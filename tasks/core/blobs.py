"""Where image bytes live: one small interface, as Django's `Storage` (save, open, delete, exists, url),
with two backends chosen by `BLOB_STORE`. The API and the workers ask it for bytes and URLs and never
learn which backend answers; a job carries only keys (`input_key`, `output_key`, `svg_key`).

- `redis` (the default): bytes under their own Redis keys with a native TTL, as before. `url` is None:
  the API serves them itself behind a signed link (`api/links.py`).
- `s3://bucket[/prefix]`: objects in any S3-compatible store (AWS S3, Cloudflare R2, Backblaze B2,
  SeaweedFS) through boto3, with SigV4 and path-style addressing (R2, B2 and SeaweedFS need no virtual
  host per bucket that way), `S3_ENDPOINT_URL`, `S3_REGION` (us-east-1) and the standard
  `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`. `url` is a presigned GET with the object's Content-Type
  and a download file name, so the bucket needs no public access and no listing is ever exposed.
  Redis then holds no image bytes, only keys.

Expiry does not rely on the bucket's lifecycle rules (SeaweedFS's and some providers' are unreliable):
every object written is first entered in one sorted set, `EXPIRY_KEY`, scored by the time it is due to
go, and `sweep` (run beside the recovery sweep by the worker services, `tasks/runtime/cli.py`) deletes what is
due, a bounded batch at a time. The entry is written before the object, so a crash between the two
leaves an entry for an object that was never written (harmless), never an object nobody will delete.
An input is deleted as soon as its job ends (`discard_input`); when the store is down at that moment,
its entry is made due now so a later sweep deletes it. The recovery sweep, which ends jobs of dead
workers in Lua, makes their inputs due with `ZADD XX 0` the same way.

A direct upload's key (`up/<id>`) is the one key a client can write, with a presigned form, for as long
as that form is valid, whatever became of the upload meanwhile. So its entry is never removed or made
due early by `delete`: only the sweep removes it, at the time its owner (`api/uploads.py`) set, which is
never before the form has expired. An object posted again under a used or refused upload's form is
deleted then, as any other.

One boto3 client per process (`_client`, cached by its settings): building one loads botocore's
service model (tens of milliseconds), and boto3 clients are thread-safe. The worker service builds it
before forking its work-horses (`tasks/runtime/worker.py`), so a job does not pay for it.
"""
from __future__ import annotations

import functools
import logging
import os
import time

from .errors import TransientError
from .keys import BLOB_PREFIX as PREFIX, BLOBS_EXPIRY_KEY as EXPIRY_KEY
from .keys import BLOBS_TICK_KEY as SWEEP_TICK_KEY  # noqa: F401 (the worker service names it here)
from .settings import StoreSettings, current

log = logging.getLogger("inkq.blobs")

SWEEP_BATCH = 200
MAX_PRESIGN_S = 7 * 86400  # SigV4 refuses presigned URLs valid longer
UNAVAILABLE = "The image store is unavailable; the job will be retried."


class StorageUnavailable(TransientError):
    """The object store did not answer or refused (network, 5xx, credentials, bucket)."""

    def __init__(self, detail: str = ""):
        super().__init__(UNAVAILABLE)
        self.detail = detail


class StoreConfigError(ValueError):
    """BLOB_STORE or the S3 settings cannot work."""


def input_key(job_id: str) -> str:
    """Key of a job's input image."""
    return f"{PREFIX}in:{job_id}"


def output_key(job_id: str, execution_id: str | None = None) -> str:
    """Key of the output image of one execution of a job (its return value names it); without an
    execution, the key of jobs stored before outputs were kept per execution."""
    return f"{PREFIX}out:{job_id}" + (f"/{execution_id}" if execution_id else "")


def svg_key(job_id: str, execution_id: str | None = None) -> str:
    """Key of a stencil's SVG, when one was asked for (per execution, as `output_key`)."""
    return f"{PREFIX}svg:{job_id}" + (f"/{execution_id}" if execution_id else "")


def outputs_of(job_id: str, execution_id: str) -> tuple[str, str]:
    """The keys one execution may have written: a late execution, whose end was refused, deletes them.
    Keyed per execution, a late copy never overwrites the result of the run that replaced it."""
    return output_key(job_id, execution_id), svg_key(job_id, execution_id)


def upload_key(upload_id: str) -> str:
    """Key of a direct upload (S3 only)."""
    return f"{PREFIX}up:{upload_id}"


def form_writable(key: str) -> bool:
    """Whether a presigned form may (re)write this key: a direct upload's."""
    return key.startswith(upload_key(""))


class RedisBlobs:
    """Bytes under their own Redis keys with a TTL, never inside a job payload."""

    kind = "redis"
    origin = None

    def __init__(self, redis):
        self.redis = redis

    def save(self, key: str, data: bytes, ttl_s: int, content_type: str | None = None, pipeline=None) -> str:
        """Store bytes under key for ttl_s seconds (in `pipeline` when given); returns the key."""
        (pipeline or self.redis).set(key, data, ex=max(1, int(ttl_s)))
        return key

    def open(self, key: str) -> bytes | None:
        """The bytes under key, or None when missing or expired."""
        return self.redis.get(key) if key else None

    def exists(self, key: str) -> bool:
        """Whether key holds bytes."""
        return bool(self.redis.exists(key))

    def delete(self, *keys: str) -> None:
        """Delete keys now."""
        if keys:
            self.redis.delete(*keys)

    def erase(self, keys: list[str], prefixes: list[str]) -> int:
        """Delete keys now (an erasure, `tasks/erasure.py`); how many held bytes. The prefixes are for the S3
        store's listing: here every key a job writes is named by its end (`outputs_of`)."""
        return int(self.redis.delete(*keys)) if keys else 0

    def url(self, key: str, filename: str, content_type: str, ttl_s: int) -> str | None:
        """None: the API serves Redis-held bytes itself."""
        return None

    def check(self) -> str | None:
        """None when the store works (Redis is checked on its own)."""
        return None

    def sweep(self, limit: int = SWEEP_BATCH) -> int:
        """Nothing to do: Redis expires keys itself."""
        return 0


class S3Blobs:
    """Objects in an S3-compatible bucket, their expiry kept in Redis (`EXPIRY_KEY`)."""

    kind = "s3"

    def __init__(self, redis, client, bucket: str, prefix: str, origin: str):
        self.redis = redis
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.origin = origin  # scheme://host[:port] of presigned URLs, for a page's CSP img-src

    def object_key(self, key: str) -> str:
        """`inkq:blob:out:<id>` is the object `<prefix>out/<id>`."""
        return self.prefix + key.removeprefix(PREFIX).replace(":", "/", 1)

    def _due(self, key: str, ttl_s: float) -> None:
        self.redis.zadd(EXPIRY_KEY, {key: time.time() + max(0.0, ttl_s)})

    def save(self, key: str, data: bytes, ttl_s: int, content_type: str | None = None, pipeline=None) -> str:
        """Write the object now (never in a Redis pipeline), due for deletion in ttl_s; returns the key."""
        self._due(key, ttl_s)
        with _unavailable_on_error("put"):
            self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data,
                                   ContentType=content_type or "application/octet-stream")
        return key

    def open(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        if not key:
            return None
        with _unavailable_on_error("get", missing_ok=True):
            return self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"].read()
        return None

    def head(self, key: str, length: int) -> tuple[int, bytes] | None:
        """(size, first `length` bytes) of the object, or None when it does not exist."""
        with _unavailable_on_error("get", missing_ok=True):
            answer = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key), Range=f"bytes=0-{length - 1}")
            total = answer.get("ContentRange", "").rpartition("/")[2]
            data = answer["Body"].read()
            return (int(total) if total.isdigit() else answer.get("ContentLength", len(data))), data
        return None

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        with _unavailable_on_error("head", missing_ok=True):
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
            return True
        return False

    def copy(self, source: str, key: str, ttl_s: int) -> str | None:
        """Copy an object inside the bucket (no bytes through this process); returns the new key, or
        None when the source does not exist."""
        self._due(key, ttl_s)
        with _unavailable_on_error("copy", missing_ok=True):
            self.client.copy_object(Bucket=self.bucket, Key=self.object_key(key),
                                    CopySource={"Bucket": self.bucket, "Key": self.object_key(source)})
            return key
        self.redis.zrem(EXPIRY_KEY, key)
        return None

    def delete(self, *keys: str) -> None:
        """Delete objects now; when the store is down, they are left due now for the next sweep. The
        entries of keys a form may still write stay as they are, for the sweep (`form_writable`)."""
        if not keys:
            return
        settled = [key for key in keys if not form_writable(key)]
        try:
            self._delete_objects(keys)
        except StorageUnavailable as exc:
            log.warning("could not delete %d objects now (%s); the blob sweep will", len(keys), exc.detail)
            if settled:
                self.redis.zadd(EXPIRY_KEY, {key: 0 for key in settled})
            return
        if settled:
            self.redis.zrem(EXPIRY_KEY, *settled)

    def erase(self, keys: list[str], prefixes: list[str]) -> int:
        """Delete now every object under the prefixes (listed: the outputs of every execution of a job) and the
        keys named, with their expiry entries (but those a form may still write, `form_writable`): an erasure
        (`tasks/erasure.py`). How many objects there were. Raises `StorageUnavailable` with nothing
        forgotten: the caller asks again."""
        found: list[str] = []
        for prefix in prefixes:
            found += self._listed(prefix)
        every = list(dict.fromkeys([*keys, *found]))
        for start in range(0, len(every), 1000):  # S3's limit per DeleteObjects
            self._delete_objects(every[start:start + 1000])
        settled = [key for key in every if not form_writable(key)]
        if settled:
            self.redis.zrem(EXPIRY_KEY, *settled)
        return len(set(found))

    def _listed(self, prefix: str) -> list[str]:
        """The keys (`inkq:blob:...`) of the objects whose key starts with `prefix`'s object key."""
        found, token = [], None
        while True:
            with _unavailable_on_error("list"):
                answer = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.object_key(prefix),
                                                     **({"ContinuationToken": token} if token else {}))
            found += [PREFIX + item["Key"][len(self.prefix):].replace("/", ":", 1)
                      for item in answer.get("Contents", [])]
            token = answer.get("NextContinuationToken")
            if not answer.get("IsTruncated") or not token:
                return found

    def _delete_objects(self, keys) -> None:
        with _unavailable_on_error("delete"):
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self.object_key(k)} for k in keys], "Quiet": True})
        errors = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
        if errors:
            raise StorageUnavailable(f"delete refused: {errors[0].get('Code')}")

    def url(self, key: str, filename: str, content_type: str, ttl_s: int) -> str:
        """A presigned GET of the object for ttl_s (at most SigV4's 7 days), served with content_type
        and a download file name."""
        return self.client.generate_presigned_url("get_object", ExpiresIn=min(int(ttl_s), MAX_PRESIGN_S), Params={
            "Bucket": self.bucket, "Key": self.object_key(key), "ResponseContentType": content_type,
            "ResponseContentDisposition": f'attachment; filename="{filename}"'})

    def presigned_post(self, key: str, content_type: str, max_bytes: int, ttl_s: int) -> dict:
        """An S3 form upload of one object: {url, fields}, limited in size and to this Content-Type."""
        return self.client.generate_presigned_post(
            self.bucket, self.object_key(key), Fields={"Content-Type": content_type},
            Conditions=[{"Content-Type": content_type}, ["content-length-range", 1, max_bytes]],
            ExpiresIn=int(ttl_s))

    def check(self) -> str | None:
        """None when the bucket answers with these credentials; else what is wrong, naming the setting."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return None
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code", "")
            if status == 404 or code in ("NoSuchBucket", "404"):
                return f"BLOB_STORE: bucket {self.bucket!r} does not exist"
            if status in (401, 403) or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                return f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: refused for bucket {self.bucket!r} ({code or status})"
            return f"BLOB_STORE: bucket {self.bucket!r} answered {code or status}"
        except BotoCoreError as exc:
            return f"S3_ENDPOINT_URL: the store does not answer ({exc})"

    def sweep(self, limit: int = SWEEP_BATCH) -> int:
        """Delete up to `limit` objects that are due; how many."""
        due = [k.decode() if isinstance(k, bytes) else k
               for k in self.redis.zrangebyscore(EXPIRY_KEY, "-inf", time.time(), start=0, num=limit)]
        if not due:
            return 0
        self._delete_objects(due)
        self.redis.zrem(EXPIRY_KEY, *due)
        return len(due)


class _unavailable_on_error:
    """Turn botocore's failures into `StorageUnavailable`; with missing_ok, a missing object is
    swallowed (the `with` body's return is skipped and the caller returns its 'missing' value)."""

    def __init__(self, what: str, missing_ok: bool = False):
        self.what = what
        self.missing_ok = missing_ok

    def __enter__(self):
        return None

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if self.missing_ok and (error.get("Code") in ("NoSuchKey", "404", "NotFound") or status == 404):
                return True
            raise StorageUnavailable(f"{self.what}: {error.get('Code') or status}") from exc
        if isinstance(exc, BotoCoreError):
            raise StorageUnavailable(f"{self.what}: {exc}") from exc
        return False


def parse_store(value: str) -> tuple[str, str] | None:
    """`s3://bucket[/prefix]` as (bucket, prefix ending in '/' or empty); None for `redis`."""
    value = (value or "redis").strip()
    if value == "redis":
        return None
    if not value.startswith("s3://"):
        raise StoreConfigError(f"BLOB_STORE must be redis or s3://bucket[/prefix], not {value!r}")
    bucket, _, prefix = value[5:].partition("/")
    if not bucket:
        raise StoreConfigError("BLOB_STORE: s3:// needs a bucket name")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/" if prefix else "")


@functools.lru_cache(maxsize=4)
def _client(endpoint: str | None, region: str, key_id: str | None, secret: str | None):
    import boto3
    from botocore.config import Config

    config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, connect_timeout=3,
                    read_timeout=20, retries={"max_attempts": 2, "mode": "standard"},
                    # botocore 1.36+ adds CRC checksums to every upload by default, which B2 and
                    # older S3-compatible servers refuse; only where the operation requires one.
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", endpoint_url=endpoint or None, region_name=region,
                                          aws_access_key_id=key_id or None, aws_secret_access_key=secret or None,
                                          config=config)


# botocore clients are not fork-safe: a child forked while the supervisor's blob sweep has a pooled
# connection in use would share its socket. Each process builds its own client on first use.
os.register_at_fork(after_in_child=_client.cache_clear)


def store(redis, settings: StoreSettings | None = None):
    """The blob store `settings` name (this process's worker settings by default), bound to this Redis (the
    S3 client is shared per process)."""
    settings = current().store if settings is None else settings
    parsed = parse_store(settings.store)
    if parsed is None:
        return RedisBlobs(redis)
    bucket, prefix = parsed
    client = _client(settings.endpoint_url, settings.region, settings.access_key_id, settings.secret_access_key)
    return S3Blobs(redis, client, bucket, prefix, _origin(client.meta.endpoint_url))


def warm(settings: StoreSettings | None = None) -> None:
    """Build this process's S3 client now (before the service's processes fork); nothing for Redis."""
    settings = current().store if settings is None else settings
    if parse_store(settings.store) is not None:
        store(None, settings)


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def result_url(blobs, job_id: str, svg: bool, ttl_s: int, value: dict | None = None) -> str | None:
    """A presigned URL of a job's PNG (or SVG) with its download name; None where the API serves it.
    `value`: the job's return value, which names its keys (older jobs: the keys by job id)."""
    value = value if isinstance(value, dict) else {}
    if svg:
        key = value.get("svgKey") or svg_key(job_id)
        return blobs.url(key, f"inkq-{job_id}.svg", "image/svg+xml", ttl_s)
    return blobs.url(value.get("outputKey") or output_key(job_id), f"inkq-{job_id}.png", "image/png", ttl_s)


def discard_input(blobs, job_id: str) -> None:
    """Delete a job's input once the job has ended: it is only needed for retries."""
    blobs.delete(input_key(job_id))
