"""Result URLs that work without an Authorization header (for `<img>` tags).

With the Redis blob store they are the API's own `/files/<token>` links, the job id signed with
SECRET_KEY and checked within RESULT_URL_TTL_S. With the S3 store they are presigned GETs of the
object itself, valid for RESULT_URL_TTL_S (`tasks.core.blobs.result_url`); the API serves no bytes.
"""
from __future__ import annotations

from itsdangerous import BadSignature

from tasks.core import blobs as blob_store
from tasks.core import links

from .status import SVG_SUFFIX


class ResultLinks:
    """Signs a job id into a token and verifies it within RESULT_URL_TTL_S, or presigns the object."""

    def __init__(self, secret_key: str, ttl_s: int, blobs=None):
        self._serializer = links.serializer(secret_key)
        self.ttl_s = ttl_s
        self.blobs = blobs

    def token(self, job_id: str) -> str:
        """A token naming the job, signed now."""
        return self._serializer.dumps(job_id)

    def verify(self, token: str) -> str | None:
        """The job id in a valid, unexpired token, else None."""
        try:
            value = self._serializer.loads(token, max_age=self.ttl_s)
        except (BadSignature, ValueError, TypeError):
            return None
        return value if isinstance(value, str) else None

    def stored(self, name: str, value: dict | None = None) -> str | None:
        """The store's own URL for `<jobId>` or `<jobId>.svg` (`value`: the job's return value, naming its
        keys), or None when the API serves the bytes."""
        if self.blobs is None:
            return None
        svg = name.endswith(SVG_SUFFIX)
        return blob_store.result_url(self.blobs, name.removesuffix(SVG_SUFFIX), svg, self.ttl_s, value)

    def url(self, base: str, name: str, value: dict | None = None) -> str:
        """The result URL of `<jobId>` or `<jobId>.svg`: the store's presigned one, else ours under base."""
        return self.stored(name, value) or f"{base}/files/{self.token(name)}"
