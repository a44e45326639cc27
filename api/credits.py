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
    """`{"balance"}` for the caller, after refunding their failed and canceled jobs."""
    return jsonify({"balance": current_app.extensions["inkq"].admission.balance(g.principal.user_id)})
