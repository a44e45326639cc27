"""Request and response schemas. They validate requests and generate `/openapi.json`: one source."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictInt

Operation = Literal["stencil", "enhance", "ia-gen", "color-match"]
StatusWord = Literal["waiting", "active", "completed", "failed", "canceled"]
MAX_PROMPT = 2000


class GenerateRequest(BaseModel):
    """Body of `POST /generate` (JSON, or the same fields as multipart form parts)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    operation: Operation = Field("stencil", description="What to do; `stencil` when absent.")
    image: Optional[str] = Field(
        None, description="Base64 (standard or URL-safe) or a data: URL of a JPEG, PNG or WebP. "
        "Required except for ia-gen.", max_length=200_000_000)
    style: Optional[Literal["standard", "fine", "bold", "topographic"]] = Field(
        None, description="Stencil style: `standard` (default), `fine`/`bold` line weights, `topographic` contour lines.")
    prompt: Optional[str] = Field(None, max_length=MAX_PROMPT, description="Extra instructions; required for ia-gen.")
    engine: Optional[Literal["auto", "local", "gemini"]] = Field(
        None, description="`auto` (default): gemini when configured, else local.")
    webhookUrl: Optional[str] = Field(None, max_length=2048, description="Called when the job ends.")
    lineWeight: Optional[float] = Field(None, ge=0.5, le=3.0, description="Stencil line weight, 1.0 = standard.")
    transparent: Optional[bool] = Field(None, description="Stencil on a transparent background.")
    colors: Optional[int] = Field(None, ge=2, le=12, description="color-match: how many dominant colours.")
    upload: Optional[str] = Field(
        None, min_length=1, max_length=64, description="An uploadId from POST /uploads, in place of `image` "
        "(S3 image store only); the caller must own it, and it serves one job.")
    retentionS: Optional[int] = Field(
        None, ge=60, description="Delete the job, its input and its outputs this many seconds after it ends "
        "(60 up to the operator's RESULT_TTL_S); without it they are kept RESULT_TTL_S (FAILURE_TTL_S for failures).")
    format: Optional[Literal["png", "svg"]] = Field(
        None, description="stencil: `png` (default) or `svg`; with `svg` the result also has `svg`, a signed URL "
        "of the same strokes as closed SVG outlines.")
    maxWaitS: Optional[StrictInt] = Field(
        None, ge=1, le=86400, description="A start deadline: a job not started within this many seconds of its "
        "submission ends `canceled` (its `error` says why), is never run and is not charged. 1-86400.")


class JobAccepted(BaseModel):
    """Answer to an accepted submission (202) or a repeated Idempotency-Key (200)."""

    jobId: str
    queue: str
    operation: Operation
    status: StatusWord
    statusUrl: str
    queuePosition: Optional[int] = Field(None, ge=1, description="1 = the next job to start in its queue, in the fair "
                                         "order; null when not known.")
    etaS: Optional[float] = Field(None, ge=0, description="Estimated seconds until the result; null when unknown.")


class PaletteEntry(BaseModel):
    """One matched ink of a color-match result."""

    name: str
    hex: str
    coverage: float
    deltaE: float
    sourceHex: Optional[str] = None


class JobResult(BaseModel):
    """A completed job's result: the signed image URL and operation-specific fields."""

    model_config = ConfigDict(extra="allow")

    image: Optional[str] = Field(None, description="Signed URL, valid without Authorization for RESULT_URL_TTL_S "
                                 "(with the S3 store, a presigned URL of the object store).")
    svg: Optional[str] = Field(None, description="stencil with `format: svg`: the SVG, a signed URL like `image`.")
    palette: Optional[list[PaletteEntry]] = None


class WebhookState(BaseModel):
    """Delivery of a job's webhook (Standard Webhooks v1), present only when `webhookUrl` was given."""

    state: Literal["waiting", "pending", "retrying", "delivered", "failed"]
    attempts: int = Field(ge=0)
    eventId: Optional[str] = Field(None, description="The `webhook-id` header, the same on every retry.")
    lastResponse: Optional[int] = Field(None, description="HTTP status of the last attempt.")
    lastError: Optional[str] = None


class JobStatusBody(BaseModel):
    """Body of `GET /status/<jobId>`."""

    jobId: str
    queue: str
    operation: Optional[Operation]
    status: StatusWord
    progress: int = Field(ge=0, le=100)
    stage: str
    result: Optional[JobResult]
    error: Optional[str]
    attempts: int = Field(ge=0)
    createdAt: Optional[str]
    startedAt: Optional[str]
    endedAt: Optional[str]
    queuePosition: Optional[int] = Field(ge=1, description="Waiting jobs: 1 = the next to start in its queue, in the "
                                         "fair order across users; null otherwise, or when not known (a job waiting "
                                         "for a retry).")
    etaS: Optional[float] = Field(ge=0, description="Waiting and active jobs: estimated seconds until the result "
                                  "(from the queue's recent p50 run time, its live slots and the position); null "
                                  "otherwise or when unknown.")
    webhook: Optional[WebhookState] = None


class JobList(BaseModel):
    """Body of `GET /jobs`."""

    jobs: list[JobStatusBody]


class JobsQuery(BaseModel):
    """Query of `GET /jobs`."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(20, ge=1, le=100)
    status: Optional[StatusWord] = None


class Canceled(BaseModel):
    """Body of `DELETE /jobs/<jobId>`."""

    jobId: str
    status: Literal["canceled"]


class UserErased(BaseModel):
    """Body of `DELETE /admin/users/<userId>/data`."""

    jobs: int = Field(ge=0, description="The user's jobs erased.")
    objects: int = Field(ge=0, description="Image objects deleted (inputs, outputs, unused uploads).")


class Error(BaseModel):
    """Every error."""

    error: str
    code: str


class Balance(BaseModel):
    """Body of `GET /credits` and `POST /admin/credits/<userId>`."""

    balance: int


class Credits(BaseModel):
    """Body of `GET /credits`: the balance, and whether credits are charged at all (`CREDITS_ENABLED`)."""

    balance: int
    enabled: bool = Field(description="false: credits are off, jobs cost nothing and `balance` means nothing.")


class CreditChange(BaseModel):
    """Body of `POST /admin/credits/<userId>`: exactly one of add or set."""

    model_config = ConfigDict(extra="forbid")

    add: Optional[int] = Field(None, ge=-1_000_000, le=1_000_000)
    set: Optional[int] = Field(None, ge=0, le=1_000_000_000)


class QueueStats(BaseModel):
    """One queue in `GET /admin/queue-stats`."""

    waiting: int
    active: int
    completed: int
    failed: int
    scheduled: int
    workers: int
    concurrency: int
    runS: Optional[float] = Field(description="p50 of the queue's last 100 completed runs, in seconds; null before any.")
    users: int = Field(ge=0, description="Users with jobs waiting in the queue.")


class UploadRequest(BaseModel):
    """Body of `POST /uploads`."""

    model_config = ConfigDict(extra="forbid")

    contentType: str = Field(max_length=100, description="image/jpeg, image/png or image/webp (others: 415).")


class UploadCreated(BaseModel):
    """A presigned S3 form upload: POST `url` as multipart/form-data with `fields`, then the `file` part."""

    uploadId: str
    url: str
    fields: dict[str, str]
    expiresAt: str = Field(description="When the form upload stops being accepted (ISO 8601, UTC).")
