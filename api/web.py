"""The web page at `/`: submit a photo, follow progress, see the stencil."""
from __future__ import annotations

from flask import Blueprint, send_from_directory

bp = Blueprint("web", __name__, static_folder="static")


@bp.get("/")
def index():
    """The single-page front end."""
    return send_from_directory(bp.static_folder, "index.html", max_age=300)
