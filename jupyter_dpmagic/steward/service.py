"""The steward's HTTP API (tornado): JSON in, DP releases and budgets out.

Every handler identifies the analyst from the request's token first; the body never says who is
asking. The steward's work runs one request at a time on a worker thread (one ledger connection,
one session); looking up a lost answer does not wait for it. Error messages are
the library's own, which never quote data; an unexpected failure is logged by its type only,
since an exception's text may hold values from the data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor

from tornado import web

from .. import wire
from ..errors import PrivacyError
from .auth import Refused
from .steward import NotFound, Steward

__all__ = ["make_app"]

log = logging.getLogger("jupyter_dpmagic.steward")

_TOKEN = re.compile(r"^\s*(?:token|bearer)\s+(\S+)\s*$", re.IGNORECASE)
_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_BODY = 1 << 20


class _Handler(web.RequestHandler):
    steward: Steward

    def initialize(self, steward: Steward, identify, worker: ThreadPoolExecutor):
        self.steward, self._identify, self._worker = steward, identify, worker
        self.analyst = None

    async def prepare(self):
        match = _TOKEN.match(self.request.headers.get("Authorization", ""))
        if match is None:
            raise _Error(401, "no token: send 'Authorization: token <your JupyterHub token>' (in a hub server, "
                              "dp.remote() does this with $JUPYTERHUB_API_TOKEN).")
        try:
            self.analyst = await self._identify(match.group(1))
        except Refused as refused:
            raise _Error(refused.status, str(refused)) from None

    async def run(self, function, *args, **kwargs):
        """Run the steward's work on the worker thread, turning refusals into JSON errors."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._worker, lambda: function(*args, **kwargs))
        except NotFound as error:
            raise _Error(404, str(error), type(error).__name__) from None
        except PrivacyError as error:
            raise _Error(409 if type(error).__name__ == "BudgetExceededError" else 400, str(error),
                         type(error).__name__) from None

    def answer(self, value) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(wire.dumps(value))

    def write_error(self, status_code: int, **kwargs) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        if isinstance(error, _Error):
            body = {"error": error.message, "type": error.kind}
        else:
            if error is not None and not isinstance(error, web.HTTPError):
                where = error.__traceback__
                while where is not None and where.tb_next is not None:
                    where = where.tb_next
                place = f"{where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where else "?"
                log.error("request failed: %s at %s", type(error).__name__, place)
            body = {"error": "the steward failed on this request (an internal error, logged); dp.history() shows "
                             "whether anything was charged.", "type": "StewardError"}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def log_exception(self, typ, value, tb):
        # Tornado's default logs the exception's text, which may quote data; write_error logs its type.
        if not isinstance(value, _Error):
            return
        log.info("%s %s refused (%d): %s", self.request.method, self.request.path, value.status_code, value.kind)


class _Error(web.HTTPError):
    def __init__(self, status: int, message: str, kind: str = "StewardError"):
        super().__init__(status)
        self.message, self.kind = message, kind


class Datasets(_Handler):
    async def get(self):
        self.answer(await self.run(self.steward.listing, self.analyst))


class Dataset(_Handler):
    async def get(self, name):
        self.answer(await self.run(self.steward.describe, name, self.analyst))


class Budget(_Handler):
    async def get(self, name):
        self.answer(await self.run(self.steward.status, name, self.analyst))


class Budgets(_Handler):
    async def get(self):
        self.answer(await self.run(self.steward.budgets, self.analyst))


class History(_Handler):
    async def get(self, name):
        last = self.get_argument("last", None)
        if last is not None and (not last.isdigit() or int(last) < 1):
            raise _Error(400, "last= takes a whole number >= 1.", "PolicyError")
        verify = self.get_argument("verify", "0") not in ("0", "", "false")
        self.answer(await self.run(self.steward.history, name, self.analyst,
                                   last=None if last is None else int(last), verify=verify))


class Release(_Handler):
    async def post(self, name):
        if len(self.request.body) > MAX_BODY:
            raise _Error(413, "this request is larger than any query plan; nothing was charged.", "PolicyError")
        try:
            request = json.loads(self.request.body)
        except ValueError:
            raise _Error(400, "the body is not JSON; nothing was charged.", "PolicyError") from None
        if not isinstance(request, dict):
            raise _Error(400, "the body is a JSON object; nothing was charged.", "PolicyError")
        request_id = request.get("request_id")
        if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
            raise _Error(400, "a release needs a request_id (32 hexadecimal digits); nothing was charged.",
                         "PolicyError")
        answers, user = self.steward.answers, self.analyst.name
        if not answers.start(user, request_id):
            raise _Error(409, "this request was sent already; fetch its answer from api/requests/<id> instead "
                              "(sending it again would be a second release).", "PolicyError")
        try:
            released = await self.run(self.steward.release, name, self.analyst, request)
        except _Error as error:
            answers.finish(user, request_id, {"state": "failed", "error": error.message, "type": error.kind})
            raise
        except Exception:
            answers.finish(user, request_id, {"state": "failed", "type": "StewardError", "error":
                                              "the steward failed on this request (an internal error, logged); "
                                              "dp.history() shows whether anything was charged."})
            raise
        answers.finish(user, request_id, {"state": "done", "released": released})
        self.answer(released)


class Lookup(_Handler):
    async def get(self, request_id):
        self.answer(self.steward.answers.get(self.analyst.name, request_id))


def make_app(steward: Steward, identify, *, prefix: str = "/") -> web.Application:
    """The steward's tornado application under ``prefix`` (the hub's ``/services/<name>/``).

    ``identify(token)`` is awaited for every request and returns the
    :class:`~jupyter_dpmagic.steward.steward.Analyst`, or raises :class:`Refused`.
    """
    prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
    options = {"steward": steward, "identify": identify, "worker": ThreadPoolExecutor(1, "dpmagic-steward")}
    name = r"([^/]+)"
    routes = [
        (r"api/datasets", Datasets), (rf"api/datasets/{name}", Dataset), (rf"api/datasets/{name}/budget", Budget),
        (rf"api/datasets/{name}/history", History), (rf"api/datasets/{name}/release", Release),
        (r"api/budgets", Budgets), (r"api/requests/([0-9a-f]{32})", Lookup),
    ]
    return web.Application([(prefix + path, handler, options) for path, handler in routes])
