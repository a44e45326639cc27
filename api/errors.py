"""Every error leaves the API as `{"error": "<human-readable>", "code": "<code>"}` (API.md)."""
from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from redis.exceptions import RedisError, ResponseError
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from werkzeug.exceptions import HTTPException

from tasks.core.blobs import StorageUnavailable

log = logging.getLogger("inkq.api")

# rq-dashboard parses its URL parts without checks (`int(per_page)`, an unknown registry name, an
# instance index past the list): what it raises on a malformed URL is the client's error, not ours.
DASHBOARD_BLUEPRINT = "rq_dashboard"
DASHBOARD_URL_ERRORS = (ValueError, LookupError, ArithmeticError, NameError)

HTTP_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answered to the client with a status, a contract code and a message."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def bad_request(message: str) -> ApiError:
    """400 invalid_request."""
    return ApiError(400, "invalid_request", message)


def not_found(message: str = "No such job.") -> ApiError:
    """404 not_found (also for another user's job)."""
    return ApiError(404, "not_found", message)


def error_response(status: int, code: str, message: str, retry_after: int | None = None):
    """The JSON response for an error."""
    response = jsonify({"error": message, "code": code})
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, int(retry_after)))
    return response


def init_app(app: Flask) -> None:
    """Register the handlers that turn every failure into contract JSON."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.retry_after)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        if status == 413:
            message = "The request body is larger than the upload limit."
        else:
            message = exc.description or exc.name
        response = error_response(status, HTTP_CODES.get(status, "error"), message)
        if status == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(InvalidJobOperation)
    def _invalid_operation(exc: InvalidJobOperation):
        return error_response(409, "conflict", f"Not possible for this job now: {exc}")

    @app.errorhandler(NoSuchJobError)
    def _no_such_job(exc: NoSuchJobError):
        return error_response(404, "not_found", "No such job.")

    @app.errorhandler(ResponseError)
    def _redis_refused(exc: ResponseError):
        log.warning("redis refused a command: %s", exc)
        return error_response(409, "conflict", "The job store refused this operation in the current state.")

    @app.errorhandler(StorageUnavailable)
    def _store_down(exc: StorageUnavailable):
        log.error("image store unavailable: %s", exc.detail)
        return error_response(503, "storage_unavailable", "The image store is unavailable; try again shortly.", 5)

    @app.errorhandler(RedisError)
    def _redis_down(exc: RedisError):
        log.error("redis unavailable: %s", exc)
        return error_response(503, "unavailable", "The job store is unavailable; try again shortly.", 5)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if request.blueprint == DASHBOARD_BLUEPRINT and isinstance(exc, DASHBOARD_URL_ERRORS):
            log.warning("rq-dashboard could not serve %s: %r", request.path, exc)
            return error_response(400, "invalid_request", "The dashboard cannot serve this URL.")
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Internal error.")
