"""Flask glue for `auth.Authenticator`: who is calling, and decorators that require a user or an admin."""
from __future__ import annotations

from dataclasses import replace
from functools import wraps

from flask import current_app, g, request

from .access import identify
from .auth import AuthError, AuthUnavailable, Principal
from .errors import ApiError


ADMIN_USER = "@admin"


def principal(allow_basic: bool = False) -> Principal:
    """The authenticated caller of this request, or a 401 ApiError."""
    found = g.get("principal")
    if found is not None:
        return found
    try:
        found = current_app.extensions["inkq"].auth.authenticate(
            request.headers.get("Authorization"), allow_basic=allow_basic)
    except AuthUnavailable as exc:
        raise ApiError(503, "unavailable", "Authentication is unavailable; try again shortly.",
                       retry_after=exc.retry_after_s) from None
    except AuthError as exc:
        raise ApiError(401, "unauthenticated", exc.message) from None
    if found.is_admin:
        found = replace(found, user_id=ADMIN_USER)
    g.principal = found
    identify(request.environ, found.user_id)
    return found


def require_user(view):
    """Any authenticated caller; sets `g.principal`."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        principal()
        return view(*args, **kwargs)

    return wrapper


def check_admin(allow_basic: bool = False) -> Principal:
    """401 without credentials, 403 for a non-admin, else the admin principal."""
    who = principal(allow_basic=allow_basic)
    if not who.is_admin:
        raise ApiError(403, "forbidden", "Admin credentials are required.")
    return who


def require_admin(view):
    """Only the admin token."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        check_admin()
        return view(*args, **kwargs)

    return wrapper
