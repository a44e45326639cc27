"""Signed, expiring result URLs that work without an Authorization header (for `<img>` tags)."""
from __future__ import annotations

from itsdangerous import BadSignature, URLSafeTimedSerializer

SALT = "inkq.result-url"


class ResultLinks:
    """Signs a job id into a token and verifies it within RESULT_URL_TTL_S."""

    def __init__(self, secret_key: str, ttl_s: int):
        self._serializer = URLSafeTimedSerializer(secret_key, salt=SALT)
        self.ttl_s = ttl_s

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
