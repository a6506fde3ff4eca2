"""The dashboard's Flask app: server-rendered pages (Jinja2 templates), each with a JSON twin, behind the
checks of fleet/web/auth.py, which run before every request of every route."""
from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from fleet.config import FleetConfigError, RolloutConfig, WebConfig
from fleet.historian import Historian
from fleet.historian.accounts import Accounts
from fleet.web import alerts_page, auth, exports, fleet_page, machine_page, rollouts_page
from fleet.web.services import KEY, Services
from fleet.web.throttle import LoginThrottle

SESSION_COOKIE = "cm_fleet_session"


def session_secret(config: WebConfig) -> bytes:
    """web.secret_file's bytes; without one, a new random secret (every restart logs everyone out)."""
    if config.secret_file is None:
        return secrets.token_bytes(32)
    try:
        secret = Path(config.secret_file).read_bytes().strip()
    except OSError as error:
        raise FleetConfigError(f"web.secret_file: cannot read {config.secret_file}: {error.strerror}") from None
    if len(secret) < 16:
        raise FleetConfigError(f"web.secret_file: {config.secret_file} holds {len(secret)} bytes; expected at least 16 "
                               "random ones (e.g. head -c 32 /dev/urandom | base64)")
    return secret


def when(time_us: int | None) -> str:
    """A time for people: UTC to the second."""
    if time_us is None:
        return "-"
    return datetime.fromtimestamp(time_us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def create_app(config: WebConfig, historian: Historian, secret: bytes | None = None,
               rollout: RolloutConfig = RolloutConfig()) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret if secret is not None else session_secret(config),
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=config.session_hours),
        MAX_CONTENT_LENGTH=64 * 1024,  # forms and API bodies are small; nothing big is ever posted
        JSON_SORT_KEYS=False,
    )
    if config.trusted_proxies:
        # Behind a TLS reverse proxy: the client's address (rate limit, logs) and https (cookies) as it says.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.trusted_proxies, x_proto=config.trusted_proxies,  # type: ignore[method-assign]
                                x_host=config.trusted_proxies, x_prefix=config.trusted_proxies)
    app.extensions[KEY] = Services(config, historian, Accounts(historian),
                                   LoginThrottle(config.login_attempts, config.login_window_s), rollout)
    app.before_request(auth.authenticate)
    for module in (auth, fleet_page, machine_page, alerts_page, rollouts_page, exports):
        app.register_blueprint(module.blueprint)
    app.jinja_env.filters["when"] = when
    app.jinja_env.globals["csrf_token"] = auth.csrf_token
    app.jinja_env.globals["anonymous"] = auth.ANONYMOUS

    @app.after_request
    def harden(response: Any) -> Any:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'")
        if response.mimetype != "text/css" and not response.mimetype.startswith(("application/javascript", "text/javascript")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app
