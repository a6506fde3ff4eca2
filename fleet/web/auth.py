"""Who is asking, and may they: sessions, API tokens, CSRF, roles, the login form and its rate limit.

Every request passes `authenticate` (registered for the whole app, so a new route is covered without a word):
- `Authorization: Bearer <token>`: the token's user; the session cookie is not read at all, which is why such a
  request needs no CSRF token (a browser never adds that header to a cross-site request by itself);
- else the session cookie (signed, HttpOnly, SameSite=Lax) holding a session id whose hash the historian keeps
  (logout, a removed user or a new password ends it server-side): every state-changing request must carry the
  session's CSRF token (form field `csrf_token` or header `X-CSRF-Token`), the login form included;
- nobody: 401 for the JSON API, a redirect to the login page for a page; a GET as a viewer when
  web.allow_anonymous says so. Roles are checked by `requires` on the routes that change something.
"""
from __future__ import annotations

import functools
import hmac
import logging
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Response, g, jsonify, redirect, render_template, request, session, url_for

from fleet.historian.accounts import User
from fleet.web.credentials import check_password, token_hash
from fleet.web.services import services

log = logging.getLogger(__name__)
blueprint = Blueprint("auth", __name__)
PUBLIC = frozenset({"auth.login", "static"})  # reachable without a login (the form itself, CSS and the chart library)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ANONYMOUS = User("anonymous", "viewer", 0)
View = TypeVar("View", bound=Callable[..., Any])


def wants_json() -> bool:
    return (request.path.endswith(".json") or "Authorization" in request.headers
            or request.accept_mimetypes.best_match(["text/html", "application/json"]) == "application/json")


def refuse(status: int, message: str) -> Response:
    """An error as the asker reads it: JSON for the API, a short page for a browser."""
    if wants_json():
        response = jsonify(error=message)
    else:
        response = Response(render_template("error.html", status=status, message=message), mimetype="text/html")
    response.status_code = status
    return response


def csrf_token() -> str:
    """The session's CSRF token, made on first use; every form carries it."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


def _bearer_user() -> User | None | Response:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return refuse(401, "Authorization: expected 'Bearer <token>'")
    user = services().accounts.token_user(token_hash(token.strip()))
    return user if user is not None else refuse(401, "unknown API token")


def _csrf_ok() -> bool:
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf")
    return isinstance(expected, str) and hmac.compare_digest(sent.encode(), expected.encode())


def authenticate() -> Response | None:
    """Runs before every request: sets g.user (None: nobody) or answers the request itself."""
    g.user = None
    if "Authorization" in request.headers:
        found = _bearer_user()
        if isinstance(found, Response):
            return found
        g.user = found
        return None
    sid = session.get("sid")
    g.user = services().accounts.session_user(token_hash(sid)) if isinstance(sid, str) else None
    if g.user is None and request.endpoint not in PUBLIC:
        if services().config.allow_anonymous and request.method in SAFE_METHODS:
            g.user = ANONYMOUS
        elif wants_json() or request.method not in SAFE_METHODS:
            return refuse(401, "log in first, or send Authorization: Bearer <token>")
        else:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))  # type: ignore[return-value]
    if request.method not in SAFE_METHODS and not _csrf_ok():
        log.warning("refused %s %s from %s: CSRF token missing or wrong", request.method, request.path, request.remote_addr)
        return refuse(403, "CSRF token missing or wrong: reload the page and try again")
    return None


def requires(role: str) -> Callable[[View], View]:
    """The route needs a logged-in user (or token) with `role` or higher; anonymous viewers never have one."""
    def decorate(view: View) -> View:
        @functools.wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            user: User | None = g.user
            if user is None or user is ANONYMOUS:
                return refuse(401, "log in first")
            if not user.may(role):
                return refuse(403, f"{user.name} is a {user.role}: this needs {role} or admin")
            return view(*args, **kwargs)
        return checked  # type: ignore[return-value]
    return decorate


def _local(target: str | None) -> str:
    """Only a path on this site is followed after the login (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("fleet.fleet_page")


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        return render_template("login.html", next=_local(request.args.get("next")), error=None)
    name = request.form.get("name", "").strip()
    password = request.form.get("password", "")
    address = request.remote_addr or "unknown"
    target = _local(request.form.get("next"))
    throttle = services().throttle
    wait = throttle.wait_s(name, address)
    if wait > 0:
        log.warning("login refused for %r from %s: too many failures", name, address)
        return _login_failed(429, f"too many failed logins: try again in {int(wait) + 1} s", target)
    accounts = services().accounts
    if not check_password(password, accounts.password_hash(name)):
        throttle.failed(name, address)
        log.warning("login failed for %r from %s", name, address)
        return _login_failed(401, "wrong name or password", target)
    session.clear()  # a new session at login: nothing from before it (no fixation)
    session.permanent = True
    sid = secrets.token_urlsafe(32)
    accounts.open_session(name, token_hash(sid), int(services().config.session_hours * 3600 * 1_000_000))
    session["sid"] = sid
    csrf_token()
    log.info("login: %s from %s", name, address)
    return redirect(target, code=303)


def _login_failed(status: int, message: str, target: str) -> Any:
    if wants_json():
        return refuse(status, message)
    return render_template("login.html", next=target, error=message), status


@blueprint.post("/logout")
def logout() -> Any:
    sid = session.get("sid")
    if isinstance(sid, str):
        services().accounts.close_session(token_hash(sid))
    session.clear()
    if g.user is not None:
        log.info("logout: %s", g.user.name)
    return redirect(url_for("auth.login"), code=303)

