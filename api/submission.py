"""Turn a `POST /generate` request into a validated submission, without decoding image pixels.

The body is JSON whatever its Content-Type says, unless it is multipart/form-data. The image is
checked by its magic bytes and its header (Pillow reads only the header on open), so a
decompression bomb is refused before any pixel is decoded.
"""
from __future__ import annotations

import binascii
import hashlib
import io
import json
import re
from dataclasses import dataclass

import pybase64
from flask import Request
from PIL import Image, UnidentifiedImageError
# The readers of the accepted formats, imported with the app (gunicorn preloads it), not by each worker's
# first submission: Pillow imports its plugins on first use (about 25 ms per process while the first
# burst's requests waited).
from PIL import JpegImagePlugin, PngImagePlugin, WebPImagePlugin  # noqa: F401
from pydantic import ValidationError

from .errors import ApiError, bad_request
from .formats import sniff
from .schemas import GenerateRequest

MIN_SIDE = 16  # the workers' engines refuse smaller images too (tasks/images.py)
ACCEPTED = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
JSON_TYPES = ("", "application/json", "text/plain")
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*?;base64,", re.IGNORECASE)
_ASCII_WS = b" \t\n\r\x0b\x0c"
_URL_SAFE = bytes.maketrans(b"-_", b"+/")


@dataclass(frozen=True)
class Submission:
    """A validated job request."""

    fields: GenerateRequest
    image: bytes | None
    mime_type: str | None

    @property
    def params(self) -> dict:
        """Job parameters (everything but the image), as stored in the job."""
        return self.fields.model_dump(exclude={"image"}, exclude_none=True)

    def fingerprint(self) -> str:
        """A hash of what was asked, to tell a repeated Idempotency-Key from a different body."""
        digest = hashlib.sha256(json.dumps(self.params, sort_keys=True).encode())
        digest.update(hashlib.sha256(self.image or b"").digest())
        return digest.hexdigest()


def decode_base64(text: str) -> bytes:
    """Decode base64 or a data: URL; standard or URL-safe alphabet, whitespace ignored.

    `pybase64` (SIMD): a 78 KB upload decodes in a few microseconds, where `binascii` took about 200
    (an eighth of the API's CPU per submission). Text as browsers and clients send it
    (standard alphabet, padded, one line) is decoded as it is; anything else is first normalised by
    byte-level translates, never regular expressions."""
    text = text.strip()
    if text[:5].lower() == "data:":
        text = _DATA_URL.sub("", text, count=1)
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise bad_request("`image` is not valid base64.") from None
    if raw:
        try:
            return pybase64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            pass
    raw = raw.translate(None, _ASCII_WS).rstrip(b"=")
    if not raw:
        raise bad_request("`image` is empty.")
    raw = raw.translate(_URL_SAFE) + b"=" * (-len(raw) % 4)
    try:
        return pybase64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("`image` is not valid base64.") from None


def check_image(data: bytes, max_pixels: int, max_bytes: int) -> str:
    """Validate image bytes by header only; returns the MIME type."""
    if len(data) > max_bytes:
        raise ApiError(413, "payload_too_large", f"The image is larger than {max_bytes // (1024 * 1024)} MB.")
    kind = sniff(data)
    if kind is None:
        raise bad_request("`image` is not an image (expected JPEG, PNG or WebP).")
    if kind not in ACCEPTED:
        raise ApiError(415, "unsupported_media_type", f"{kind.upper()} images are not accepted; send JPEG, PNG or WebP.")
    try:
        with Image.open(io.BytesIO(data), formats=[kind.upper()]) as img:  # only the sniffed format's reader
            width, height = img.size
    except Image.DecompressionBombError:
        raise bad_request(f"`image` has more pixels than the limit of {max_pixels}.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise bad_request("`image` could not be read as a " + kind.upper() + " image.") from None
    if width < MIN_SIDE or height < MIN_SIDE:
        raise bad_request(f"`image` is {width}x{height} pixels; it needs at least {MIN_SIDE} on each side.")
    if width * height > max_pixels:
        raise bad_request(f"`image` has {width}x{height} pixels, more than the limit of {max_pixels}.")
    return ACCEPTED[kind]


MAX_WAIT_RULE = "`maxWaitS` must be a whole number of seconds from 1 to 86400."


def _validated(raw: dict) -> GenerateRequest:
    try:
        return GenerateRequest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        if where == "maxWaitS":
            raise bad_request(MAX_WAIT_RULE) from None
        raise bad_request(f"`{where}`: {first.get('msg', 'invalid value')}.") from None


def _check_not_cut(request: Request) -> None:
    """`get_data` cuts a chunked body at MAX_CONTENT_LENGTH without an error; reading past it raises 413."""
    if request.content_length is None:
        request.stream.read(1)


def _from_multipart(request: Request) -> tuple[dict, bytes | None]:
    raw: dict = {}
    for key in request.form:
        values = request.form.getlist(key)
        if len(values) != 1:
            raise bad_request(f"`{key}` is given more than once.")
        raw[key] = values[0]
    for key in ("lineWeight", "colors", "transparent"):
        if key in raw:
            raw[key] = raw[key].strip() or None
    if "maxWaitS" in raw:  # a form part is text: whole numbers only, as JSON's integer (StrictInt) takes them
        text = raw["maxWaitS"].strip()
        raw["maxWaitS"] = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else raw["maxWaitS"]
    extra_files = [k for k in request.files if k != "image"]
    if extra_files:
        raise bad_request(f"Unknown file part `{extra_files[0]}`.")
    if "image" in raw:
        raise bad_request("`image` must be a file part in multipart requests.")
    uploads = request.files.getlist("image")
    if len(uploads) > 1:
        raise bad_request("`image` is given more than once.")
    return raw, (uploads[0].read() if uploads else None)


def _from_json(request: Request, mimetype: str) -> tuple[dict, bytes | None]:
    body = request.get_data(cache=False)
    _check_not_cut(request)
    if not body.strip():
        raise bad_request("The request body is empty; send JSON or multipart/form-data.")
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        if mimetype not in JSON_TYPES and not mimetype.endswith("+json"):
            raise ApiError(415, "unsupported_media_type", "Send JSON or multipart/form-data.") from None
        raise bad_request("The request body is not valid JSON.") from None
    if not isinstance(raw, dict):
        raise bad_request("The request body must be a JSON object.")
    image = raw.get("image")
    if image is not None and not isinstance(image, str):
        raise bad_request("`image` must be a base64 string or a data: URL.")
    return raw, None


def parse(request: Request, max_pixels: int, max_image_bytes: int) -> Submission:
    """Read and validate a submission from the request."""
    mimetype = (request.mimetype or "").lower()
    if mimetype == "multipart/form-data":
        raw, image = _from_multipart(request)
    elif mimetype in ("application/x-www-form-urlencoded",):
        raise ApiError(415, "unsupported_media_type", "Send JSON or multipart/form-data.")
    else:
        raw, image = _from_json(request, mimetype)
    fields = _validated(raw)
    if fields.image is not None:
        image = decode_base64(fields.image)
    if image is not None and len(image) == 0:
        raise bad_request("`image` is empty.")
    if image is not None and fields.upload is not None:
        raise bad_request("Send `image` or `upload`, not both.")
    mime = check_image(image, max_pixels, max_image_bytes) if image is not None else None
    if fields.operation == "ia-gen":
        if not fields.prompt:
            raise bad_request("`prompt` is required for ia-gen.")
    elif image is None and fields.upload is None:
        raise bad_request("`image` (or `upload`) is required for " + fields.operation + ".")
    return Submission(fields=fields, image=image, mime_type=mime)
