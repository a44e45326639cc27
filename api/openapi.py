"""`/openapi.json` (OpenAPI 3.1) and `/docs`, generated from the pydantic schemas that validate requests.

The path table below names, for each endpoint, the schema models it reads and answers; their
JSON Schemas come from pydantic, so the document cannot drift from the validation code.
`OPERATIONS` names every operation (`operationId`, the names of API.md, which generated clients take
for their methods) and tags it; an operation missing from it stops the app at start (KeyError), so
none ships unnamed.
"""
from __future__ import annotations

from functools import cache

from flask import Blueprint, Flask, jsonify
from pydantic import BaseModel

from . import schemas as s
from .auth import JWT_USER_PREFIX, USER_ID_TEXT
from tasks.core.keys import INDEX_CAP

from .store import LIST_WINDOW

bp = Blueprint("openapi", __name__)
REF = "#/components/schemas/{model}"

ERRORS = {
    400: "Invalid request (missing or unknown field, bad value, undecodable image)",
    401: "No or bad credentials",
    403: "Forbidden or insufficient credits",
    404: "Unknown job or upload, or another user's (and /uploads without the S3 store)",
    405: "Method not allowed",
    409: "Conflict",
    413: "Body over the upload limit",
    415: "Unsupported image format or body type",
    429: "Rate limited, too many jobs in flight, open event streams or unused uploads (Retry-After)",
    503: "Redis down, queue full, no provider, or the image store unreachable (Retry-After)",
}


TAGS = [
    {"name": "jobs", "description": "Submit jobs, follow them, fetch their results, list and cancel them."},
    {"name": "account", "description": "The caller's credit balance."},
    {"name": "admin", "description": "Operators: queue counts, balances and a user's erasure (admin token)."},
    {"name": "operations", "description": "Liveness, readiness and metrics for the platform."},
]

# Each operation's id (the names of API.md; generated clients name their methods after them) and tag.
OPERATIONS = {
    ("post", "/generate"): ("createJob", "jobs"),
    ("get", "/status/{jobId}"): ("getJob", "jobs"),
    ("get", "/status/{jobId}/events"): ("streamJobEvents", "jobs"),
    ("get", "/result/{jobId}"): ("getJobResult", "jobs"),
    ("get", "/files/{token}"): ("getResultFile", "jobs"),
    ("get", "/jobs"): ("listJobs", "jobs"),
    ("delete", "/jobs/{jobId}"): ("cancelJob", "jobs"),
    ("delete", "/jobs/{jobId}/data"): ("deleteJobData", "jobs"),
    ("post", "/uploads"): ("createUpload", "jobs"),
    ("get", "/credits"): ("getCredits", "account"),
    ("get", "/admin/queue-stats"): ("getQueueStats", "admin"),
    ("post", "/admin/credits/{userId}"): ("setCredits", "admin"),
    ("delete", "/admin/users/{userId}/data"): ("deleteUserData", "admin"),
    ("get", "/healthz"): ("getHealth", "operations"),
    ("get", "/readyz"): ("getReadiness", "operations"),
    ("get", "/metrics"): ("getMetrics", "operations"),
}


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model_or_schema) -> dict:
    schema = _ref(model_or_schema) if isinstance(model_or_schema, type) else model_or_schema
    return {"application/json": {"schema": schema}}


def _responses(ok: dict, errors: tuple[int, ...]) -> dict:
    out = dict(ok)
    for code in errors:
        out[str(code)] = {"description": ERRORS[code], "content": _json(s.Error)}
    return out


def _job_id(name: str = "jobId") -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "maxLength": 200}}


def _status_event() -> dict:
    """One server-sent event (OpenAPI 3.1: the event-stream schema describes each event)."""
    return {"type": "object", "required": ["data"], "properties": {
        "event": {"const": "status"},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _ref(s.JobStatusBody),
                 "description": "The status object, as in GET /status/{jobId}."},
        "retry": {"type": "integer", "minimum": 0}}}


def _multipart_schema() -> dict:
    schema = s.GenerateRequest.model_json_schema(ref_template=REF)
    props = dict(schema["properties"])
    props["image"] = {"type": "string", "format": "binary", "description": "JPEG, PNG or WebP file."}
    return {"type": "object", "properties": props, "additionalProperties": False}


@cache
def build_spec() -> dict:
    """The OpenAPI document, built once per process (it depends on no setting; every app serves the same
    object, which nothing changes)."""
    models = [s.GenerateRequest, s.JobAccepted, s.JobStatusBody, s.JobList, s.Canceled, s.Error, s.Balance,
              s.Credits, s.CreditChange, s.QueueStats, s.UserErased, s.JobResult, s.PaletteEntry, s.UploadRequest, s.UploadCreated]
    components = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    png = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
    user = [{"bearer": []}]
    paths = {
        "/generate": {"post": {
            "summary": "Submit a job; answers at once with its id", "security": user,
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                            "description": "The same key and body within 24 h answers the original job with 200 once "
                                           "it is stored; 409 `conflict` with another body, or (with Retry-After) "
                                           "while the original request is still being processed."}],
            "requestBody": {"required": True, "content": {
                **_json(s.GenerateRequest), "multipart/form-data": {"schema": _multipart_schema()}}},
            "responses": _responses({
                "202": {"description": "Accepted", "content": _json(s.JobAccepted)},
                "200": {"description": "Repeated Idempotency-Key: the original job", "content": _json(s.JobAccepted)},
            }, (400, 401, 403, 404, 409, 413, 415, 429, 503))}},
        "/uploads": {"post": {
            "operationId": "createUpload", "security": user,
            "summary": "A presigned form upload for one image, used by POST /generate as `upload` (S3 store only)",
            "requestBody": {"required": True, "content": _json(s.UploadRequest)},
            "responses": _responses({"201": {"description": "Created", "content": _json(s.UploadCreated)}},
                                    (400, 401, 404, 415, 429, 503))}},
        "/status/{jobId}": {"get": {
            "summary": "A job's status, progress and result", "security": user,
            "parameters": [_job_id(), {"name": "queue", "in": "query", "required": False,
                                       "schema": {"type": "string"}, "description": "Accepted and ignored."}],
            "responses": _responses({"200": {"description": "Status", "content": _json(s.JobStatusBody)}},
                                    (401, 404, 429))}},
        "/status/{jobId}/events": {"get": {
            "summary": "Server-sent events: status objects as they change, until the terminal one",
            "security": user, "parameters": [_job_id()],
            "responses": _responses({"200": {"description": "Event stream",
                                             "content": {"text/event-stream": {"schema": _status_event()}}}},
                                    (401, 404, 429))}},
        "/result/{jobId}": {"get": {
            "summary": "The output PNG (owner only); with the S3 store a 302 to a fresh presigned URL",
            "security": user, "parameters": [_job_id()],
            "responses": _responses({"200": {"description": "PNG", "content": png},
                                     "302": {"description": "S3 store: the presigned URL in Location"}},
                                    (401, 404, 429))}},
        "/files/{token}": {"get": {
            "summary": "The output PNG behind a signed, expiring URL (no auth)", "security": [],
            "parameters": [_job_id("token")],
            "responses": _responses({"200": {"description": "PNG", "content": png}}, (404,))}},
        "/jobs": {"get": {
            "summary": "The caller's jobs, newest first", "security": user,
            "description": f"Lists the caller's newest {LIST_WINDOW} jobs at most: `status` filters among those only, so "
                           f"a request costs the same whatever the history. The index keeps a user's newest {INDEX_CAP} "
                           "jobs; older ones stay readable by id until they expire.",
            "parameters": [{"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                           {"name": "status", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": list(s.StatusWord.__args__)}}],
            "responses": _responses({"200": {"description": "Jobs", "content": _json(s.JobList)}}, (400, 401, 429))}},
        "/jobs/{jobId}": {"delete": {
            "summary": "Cancel a waiting job or stop an active one", "security": user, "parameters": [_job_id()],
            "responses": _responses({"200": {"description": "Canceled", "content": _json(s.Canceled)}},
                                    (401, 404, 409, 429))}},
        "/jobs/{jobId}/data": {"delete": {
            "summary": "Erase a job now: canceled first if it has not ended, then its record, input and outputs",
            "description": "Deletes the job's record, input, outputs (in Redis or the object store), idempotency entry, "
                           "listing entry and leases; afterwards every job endpoint answers 404 for it and every URL "
                           "handed out for it stops working. A running job is stopped first.",
            "security": user, "parameters": [_job_id()],
            "responses": _responses({"204": {"description": "Erased"}}, (401, 404, 429, 503))}},
        "/credits": {"get": {
            "summary": "The caller's credit balance", "security": user,
            "responses": _responses({"200": {"description": "Balance", "content": _json(s.Credits)}}, (401, 429))}},
        "/admin/queue-stats": {"get": {
            "summary": "Per-queue counts (admin)", "security": user,
            "responses": _responses({"200": {"description": "Stats", "content": _json(
                {"type": "object", "additionalProperties": _ref(s.QueueStats)})}}, (401, 403))}},
        "/admin/credits/{userId}": {"post": {
            "summary": "Add to or set a user's balance (admin)", "security": user,
            "parameters": [{"name": "userId", "in": "path", "required": True, "description":
                            "An API key's user id, or jwt:<sub> for a JWT's user", "schema": {
                                "type": "string", "pattern": f"^({JWT_USER_PREFIX})?{USER_ID_TEXT.pattern}$"}}],
            "requestBody": {"required": True, "content": _json(s.CreditChange)},
            "responses": _responses({"200": {"description": "Balance", "content": _json(s.Balance)}},
                                    (400, 401, 403))}},
        "/admin/users/{userId}/data": {"delete": {
            "summary": "Erase everything of a user (admin): jobs, uploads, idempotency keys, leases, counters, balance",
            "security": user,
            "parameters": [{"name": "userId", "in": "path", "required": True, "description":
                            "An API key's user id, or jwt:<sub> for a JWT's user", "schema": {
                                "type": "string", "pattern": f"^({JWT_USER_PREFIX})?{USER_ID_TEXT.pattern}$"}}],
            "responses": _responses({"200": {"description": "Erased", "content": _json(s.UserErased)}},
                                    (400, 401, 403, 503))}},
        "/healthz": {"get": {"summary": "Liveness", "security": [],
                             "responses": {"200": {"description": "Running"}}}},
        "/readyz": {"get": {"summary": "Readiness (Redis answers)", "security": [],
                            "responses": _responses({"200": {"description": "Ready"}}, (503,))}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                             "responses": _responses({"200": {"description": "Text format",
                                                              "content": {"text/plain": {"schema": {"type": "string"}}}}},
                                                     (401,))}},
    }
    for path, methods in paths.items():
        for method, operation in methods.items():
            operation_id, tag = OPERATIONS[(method, path)]
            operation.update(operationId=operation_id, tags=[tag])
    return {
        "openapi": "3.1.0",
        "info": {"title": "inkq", "version": "1.0.0",
                 "description": "Background image jobs for tattoo stencils: submit, follow progress, fetch results."},
        "tags": TAGS,
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "API key, JWT or admin token"}}},
    }


def init_app(app: Flask) -> None:
    """Serve /openapi.json and the Swagger UI at /docs (assets bundled, no CDN)."""
    from flask_swagger_ui import get_swaggerui_blueprint

    spec = build_spec()
    app.add_url_rule("/openapi.json", "openapi", lambda: jsonify(spec))
    app.register_blueprint(get_swaggerui_blueprint("/docs", "/openapi.json", config={"app_name": "inkq API"}),
                           url_prefix="/docs")
