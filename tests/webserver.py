"""`toolkit web`'s server in a background thread, for the browser test and the web benchmark."""

from __future__ import annotations

import threading

from toolkit.web import WebConfig, make_server, url


class Background:
    """A server running in a thread: `with Background(config) as base_url: ...`."""

    def __init__(self, config: WebConfig) -> None:
        self.server = make_server(config)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return url(self.server)

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
