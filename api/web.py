"""The web page at `/`: submit a photo, follow progress, see the stencil.

The page is served with a strict Content-Security-Policy: scripts, styles and fetches
only from this origin, no inline script or style (the page has none; app.js sets styles through
the CSSOM, which CSP allows), images from this origin (results are served under `/files/`) plus
`data:` (the favicon) and `blob:` (the preview of the picked file), plus the object store's origin
when results are presigned URLs of an S3 store (`BLOB_STORE=s3://...`), no framing, no `<base>`, forms
only to this origin. Whatever text a job or user brings is set with textContent, so the policy is a
second wall: injected markup could neither run script nor load from elsewhere. Every response of
this blueprint (the page and its static files) also carries nosniff and `Referrer-Policy: no-referrer`.
The API key is kept in sessionStorage (this tab) unless the user ticks "Remember on this device",
which puts it in localStorage; app.js holds it in no other place.
"""
from __future__ import annotations

from flask import Blueprint, current_app, request, send_from_directory

bp = Blueprint("web", __name__, static_folder="static")


def page_policy(store_origin: str | None = None) -> str:
    """The page's CSP; `store_origin` is where presigned result images come from, if anywhere."""
    images = "img-src 'self' data: blob:" + (f" {store_origin}" if store_origin else "")
    return "; ".join(("default-src 'none'", "script-src 'self'", "style-src 'self'", images,
                      "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'"))


@bp.get("/")
def index():
    """The single-page front end."""
    return send_from_directory(bp.static_folder, "index.html", max_age=300)


@bp.after_request
def _protected(response):
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint == "web.index":
        response.headers["Content-Security-Policy"] = page_policy(current_app.extensions["inkq"].blobs.origin)
        response.headers["X-Frame-Options"] = "DENY"
    return response
