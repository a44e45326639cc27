"""Job functions, found by dotted name (`tasks.jobs.stencil`, ...). Each takes one JSON `spec`:

    {"jobId", "operation", "userId", "inputKey": str | None, "mimeType": str | None,
     "params": {"style", "prompt", "engine", "lineWeight", "transparent", "colors", "format", "upload",
                "retentionS", "webhookUrl"}}

A job reads its input from the blob store (`tasks/core/blobs.py`: Redis or S3), runs an engine, stores the
PNG under its output key and returns `{"outputKey", ...operation-specific fields}`. A store that does
not answer raises `blobs.StorageUnavailable`, a transient error: the attempt is retried with backoff. Exceptions propagate so RQ records failures and
retries; `run` only asks `errors.decide` whether this failure is retried and after how long.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone

from rq import get_current_job

from .core import blobs
from .core.changes import execution_of, save_meta_and_announce
from .core.errors import CANCELED_MESSAGE, FinalError, decide
from .core.keys import RETENTION_GRACE_S
from .core.progress import job_reporter
from .core.settings import WorkerSettings, current


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _begin(job) -> None:
    if job.get_meta(refresh=True).get("canceledAt"):
        # Canceled while a worker was already taking it off the queue: do no work.
        job.meta["canceled"] = True
        job.retries_left = 0
        save_meta_and_announce(job)
        raise FinalError(CANCELED_MESSAGE)
    job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
    job.meta["pid"] = os.getpid()  # the work-horse running this attempt, for operators
    job.meta.setdefault("startedAt", _now())
    job.meta.pop("error", None)
    job.meta["progress"] = 0
    job.meta["stage"] = "starting"
    save_meta_and_announce(job)


def record_failure(job, exc: BaseException) -> None:
    """Write a failed attempt's outcome into the job (`errors.decide`): its message, and its retry delay or no retry."""
    decision = decide(exc, int(job.meta.get("attempts", 1)), int(job.retries_left or 0))
    job.meta["error"] = decision.message
    if decision.retry:
        job.retry_intervals = [decision.delay]
        job.meta["stage"] = f"retrying in {decision.delay}s"
    else:
        job.retries_left = 0
    save_meta_and_announce(job)


def run(spec: dict, work) -> dict:
    """Run `work(spec, image_bytes, settings, report) -> (png, extras)` as the current job, with this
    process's worker settings (`tasks.core.settings.current`, read once per service)."""
    job = get_current_job()
    settings = current()
    report = job_reporter(job)
    _begin(job)
    try:
        report(5, "loading input")
        data = None
        store = blobs.store(job.connection)
        if spec.get("inputKey"):
            data = store.open(spec["inputKey"])
            if data is None:
                raise FinalError("The input image expired before the job could run; submit it again.")
        png, extras = work(spec, data, settings, report)
        report(92, "storing result")
        key = store.save(blobs.output_key(job.id, execution_of(job)), png, result_ttl_s(spec, settings), "image/png")
        report(100, "done")
        return {"outputKey": key, **extras}
    except Exception as exc:
        record_failure(job, exc)
        raise


def result_ttl_s(spec: dict, settings: WorkerSettings) -> int:
    """How long a result image is kept: `RESULT_TTL_S`, or for a job submitted with `retentionS` that long
    plus `RETENTION_GRACE_S` (the retention sweep, `tasks/erasure.py`, deletes it `retentionS` after the
    job's end; this expiry is the backstop)."""
    keep = (spec.get("params") or {}).get("retentionS")
    return int(keep) + RETENTION_GRACE_S if isinstance(keep, int) and keep > 0 else settings.result_ttl_s


def _engine(spec: dict, settings: WorkerSettings) -> str:
    engine = spec.get("params", {}).get("engine") or settings.engine
    if engine == "auto":
        engine = "gemini" if settings.gemini_api_key else "local"
    return engine


def _decoded(data: bytes, settings: WorkerSettings, report, working_pixels: int = 0):
    from .images import decode

    report(10, "decoding image")
    img = decode(data, settings.max_pixels, working_pixels=working_pixels)
    report(20, "decoded")
    return img


def _encoded(img, report) -> bytes:
    from .images import encode_png

    report(88, "encoding PNG")
    return encode_png(img)


def _from_provider(spec: dict, data: bytes | None, settings: WorkerSettings, report) -> tuple[bytes, dict]:
    from . import gemini

    params = spec.get("params", {})
    prompt = gemini.prompt_for(spec["operation"], params.get("style"), params.get("prompt"))
    report(25, "sending to Gemini")
    with gemini.answer_gate.scope():  # the answer's turn lasts until its image is checked (tasks/gemini.py)
        out = gemini.generate_image(settings, prompt, data, spec.get("mimeType"))
        report(80, "received from Gemini")
        img = _decoded(out, settings, lambda p, s: report(82, "checking provider image"))
        extras = {"width": img.width, "height": img.height, "engine": "gemini"}
        if _is_plain_png(out, img):
            return out, extras  # stored as the provider sent it: re-encoding cost CPU on the job threads' process
        return _encoded(img, report), extras


def _is_plain_png(data: bytes, img) -> bool:
    """Whether `data` is a PNG whose decoded, upright image is `img` as it stands (same size, RGB/RGBA)."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as original:
        return original.size == img.size and original.mode == img.mode


def _stencil_work(spec, data, settings, report):
    if _engine(spec, settings) == "gemini":
        png, extras = _from_provider(spec, data, settings, report)
        if spec.get("params", {}).get("format") != "svg":
            return png, extras
        import io

        from PIL import Image

        from .vector import from_image

        report(86, "tracing the SVG")
        return png, {**extras, **_stored_svg({"svg": from_image(Image.open(io.BytesIO(png)))}, spec, settings)}
    png, extras, vector = _on_cpu("local_stencil", spec, data, settings, report)
    return png, {**extras, **_stored_svg(vector, spec, settings)}


def _on_cpu(name: str, spec: dict, data, settings: WorkerSettings, report):
    """Run a local engine's work (`local_stencil`, ...) in the service's CPU pool (`tasks/runtime/cpu.py`), or here."""
    from .core import offload

    job = get_current_job()
    job_id = f"{job.id}:{execution_of(job)}" if job and execution_of(job) else job.id if job else None
    return offload.run(f"tasks.jobs.{name}", spec, data, settings, job_id=job_id,
                       redis_url=settings.redis_url, report=report)


def local_stencil(spec, data, settings, report):
    """The local stencil engine: (PNG, extras, its vector output or None)."""
    from .stencil import stencil as make_stencil

    params = spec.get("params", {})
    img = _decoded(data, settings, report)
    vector = {} if params.get("format") == "svg" else None
    out = make_stencil(img, style=params.get("style") or "standard", line_weight=params.get("lineWeight"),
                       transparent=bool(params.get("transparent")), report=report, vector=vector)
    extras = {"width": out.width, "height": out.height, "engine": "local", "style": params.get("style") or "standard"}
    return _encoded(out, report), extras, vector


def _stored_svg(vector: dict | None, spec: dict, settings: WorkerSettings) -> dict:
    """Store the stencil's SVG beside its PNG; the key for the result, or nothing without one."""
    if not vector or not vector.get("svg"):
        return {}
    job = get_current_job()
    key = blobs.store(job.connection).save(blobs.svg_key(job.id, execution_of(job)), vector["svg"].encode(),
                                           result_ttl_s(spec, settings), "image/svg+xml")
    return {"svgKey": key}


def _enhance_work(spec, data, settings, report):
    if _engine(spec, settings) == "gemini":
        return _from_provider(spec, data, settings, report)
    return _on_cpu("local_enhance", spec, data, settings, report)


def local_enhance(spec, data, settings, report):
    """The local enhance engine: (PNG, extras)."""
    from .enhance import INPUT_PIXELS
    from .enhance import enhance as make_enhanced

    img = _decoded(data, settings, report, working_pixels=INPUT_PIXELS)
    out = make_enhanced(img, report=report)
    return _encoded(out, report), {"width": out.width, "height": out.height, "engine": "local"}


def _ia_gen_work(spec, data, settings, report):
    if _engine(spec, settings) != "gemini" or not settings.gemini_api_key:
        raise FinalError("No image provider is configured for ia-gen.")
    return _from_provider(spec, data, settings, report)


def _color_match_work(spec, data, settings, report):
    return _on_cpu("local_color_match", spec, data, settings, report)


def local_color_match(spec, data, settings, report):
    """Colour matching: (preview PNG, extras with the palette)."""
    from .colormatch import match_colors

    params = spec.get("params", {})
    img = _decoded(data, settings, report)
    preview, palette = match_colors(img, colors=int(params.get("colors") or 6), report=report)
    return _encoded(preview, report), {"palette": palette, "engine": "local"}


def stencil(spec: dict) -> dict:
    """Photo → tattoo stencil."""
    return run(spec, _stencil_work)


def enhance(spec: dict) -> dict:
    """Photo → cleaner, sharper, 2× larger image."""
    return run(spec, _enhance_work)


def ia_gen(spec: dict) -> dict:
    """Prompt (+ optional reference image) → new tattoo design."""
    return run(spec, _ia_gen_work)


def color_match(spec: dict) -> dict:
    """Image → dominant colours matched to tattoo inks, with a posterized preview."""
    return run(spec, _color_match_work)
