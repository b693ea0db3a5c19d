"""A steward served in this process, on a loopback port, for the isolated-mode tests.

The real registry, ledger, steward and tornado application run in a background thread; only who a
token belongs to comes from a table here instead of a JupyterHub (tests/hub/ checks the real hub).
"""

from __future__ import annotations

import asyncio
import socket
import threading

from jupyter_dpmagic.steward.auth import Refused
from jupyter_dpmagic.steward.service import make_app
from jupyter_dpmagic.steward.steward import Analyst, Steward


class TokenTable:
    """``token -> Analyst``; unknown tokens are refused as the hub refuses them."""

    def __init__(self, tokens: dict[str, Analyst]):
        self.tokens = dict(tokens)

    async def __call__(self, token: str) -> Analyst:
        found = self.tokens.get(token)
        if found is None:
            raise Refused(403, "the hub does not know this token (revoked or expired)")
        return found


class Served:
    """``steward`` served under ``prefix`` at :attr:`url` until :meth:`stop`."""

    def __init__(self, steward: Steward, identify, *, prefix: str = "/services/dpmagic/", app=None):
        self.steward = steward
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}{prefix}"
        self._app = app or make_app(steward, identify, prefix=prefix)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the steward did not start")

    def _serve(self):
        async def main():
            from tornado.httpserver import HTTPServer

            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = HTTPServer(self._app)
            server.listen(self.port, address="127.0.0.1")
            self._ready.set()
            await self._stop.wait()
            server.stop()

        asyncio.run(main())

    def stop(self):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
