"""The caller's credit balance (`GET /credits`); admins change balances in `admin.py`."""
from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify

from .guard import require_user
from .limits import limit_reads

bp = Blueprint("credits", __name__)


@bp.get("/credits")
@require_user
@limit_reads
def balance():
    """`{"balance", "enabled"}` for the caller, after refunding their failed and canceled jobs."""
    ctx = current_app.extensions["inkq"]
    return jsonify({"balance": ctx.admission.balance(g.principal.user_id), "enabled": ctx.settings.credits_enabled})
