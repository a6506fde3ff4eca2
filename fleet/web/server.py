"""The dashboard served by waitress (pure Python, a thread pool) in `cm-fleet serve`'s process, beside the ingest."""
from __future__ import annotations

import logging
import threading
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

from fleet.config import FleetConfigError, RolloutConfig, WebConfig
from fleet.historian import Historian
from fleet.web.app import create_app

log = logging.getLogger(__name__)
THREADS = 4  # page requests at once; each holds the historian's lock only for its queries


class WebServer:
    def __init__(self, config: WebConfig, historian: Historian, rollout: RolloutConfig = RolloutConfig()) -> None:
        self.app = create_app(config, historian, rollout=rollout)
        try:
            # X-Forwarded-* are believed by werkzeug's ProxyFix (web.trusted_proxies); without a trusted proxy
            # waitress drops them before the app sees them.
            self._server: Any = create_server(self.app, host=config.host, port=config.port, threads=THREADS, ident="cm-fleet",
                                              clear_untrusted_proxy_headers=config.trusted_proxies == 0)
        except OSError as error:
            raise FleetConfigError(f"web.host, web.port: cannot listen on {config.host}:{config.port}: {error.strerror}") from None
        self._thread = threading.Thread(target=self._server.run, name="fleet-web", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.effective_host, self._server.effective_port
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def start(self) -> None:
        self._thread.start()
        log.info("dashboard on %s", self.url)

    def stop(self) -> None:
        """As waitress's own multi-socket server stops: its workers, then every socket (kept-alive ones too)."""
        self._server.task_dispatcher.shutdown()
        wasyncore.close_all(self._server._map)
        self._thread.join(10)
