"""Isolated mode, the analyst's side: private frames whose data a steward service holds.

:func:`remote` returns a :class:`~jupyter_dpmagic.frame.PrivateFrame` like :func:`protect` does, but
the kernel holds only the dataset's columns, dtypes and policy. Each release is sent to the steward
as a query plan with the cell's spending parameters; the steward checks, charges its ledger and
answers with the release. Budgets and histories are read from the steward too.

A release whose answer is lost (a timeout) is never sent again: it is looked up by its request id,
so a charge the steward made is reported (and its value recovered when the steward still has it),
never made twice.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass


from . import wire
from ._analysis import dtype_kind, empty_frame
from .bounds import EstimatedBounds
from .context import Scope
from .errors import BudgetExceededError, PolicyError, PrivacyError, StewardError
from .policy import Policy
from .session import Dataset, Released, get_session, scope_value

__all__ = ["StewardClient", "connect", "connection", "remote", "STEWARD_URL_ENV"]

STEWARD_URL_ENV = "DPMAGIC_STEWARD_URL"
# A token of its own first; in a JupyterHub server, the server's own token (its scopes must include
# access:services!service=<steward>).
TOKEN_ENVS = ("DPMAGIC_STEWARD_TOKEN", "JUPYTERHUB_API_TOKEN")
DEFAULT_TIMEOUT = 60.0
# How long a kernel whose answer was lost waits for the steward to finish that release.
RECOVER_SECONDS = 300.0
_ERRORS = {"BudgetExceededError": BudgetExceededError, "PolicyError": PolicyError, "PrivacyError": PrivacyError,
           "PlanError": PolicyError, "NotFound": PolicyError}


class _NoAnswer(Exception):
    """The request was sent, and no answer came back in time."""


class StewardClient:
    """A connection to a steward: its URL, the token that identifies this user, a timeout.

    Parameters
    ----------
    url : str
        The steward's base URL, e.g. ``http://127.0.0.1:8000/services/dpmagic/``.
    token : str
        A JupyterHub token of this user that holds ``access:services!service=<steward>``.
    timeout : float, default 60
        Seconds to wait for an answer.
    """

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise PolicyError(f"a steward URL starts with http:// or https:// (got {url!r}); ask your hub "
                              "administrator for it, e.g. http://127.0.0.1:8000/services/dpmagic/.")
        if not token:
            raise PolicyError("connecting to a steward needs a token: in a JupyterHub server it is "
                              "$JUPYTERHUB_API_TOKEN; elsewhere pass dp.connect(url, token=...).")
        self.url = url if url.endswith("/") else url + "/"
        self._token = token
        self.timeout = float(timeout)

    def __repr__(self) -> str:
        return f"StewardClient({self.url!r})"

    # ---------------------------------------------------------------------------------- requests
    def get(self, path: str, **params):
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return self._call("GET", path + (f"?{query}" if query else ""))

    def _call(self, method: str, path: str, body: dict | None = None, *, timeout: float | None = None):
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"token {self._token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return wire.loads(response.read())
        except urllib.error.HTTPError as error:
            raise _refusal(error, self.url) from None
        except (TimeoutError, socket.timeout):
            raise _NoAnswer() from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, (TimeoutError, socket.timeout)):
                raise _NoAnswer() from None
            raise StewardError(f"cannot reach the steward at {self.url} ({error.reason}); nothing was charged. "
                               "Check that the service is running, or the URL (%dp connect URL).") from None
        except (ConnectionError, OSError) as error:
            raise StewardError(f"the connection to the steward at {self.url} failed ({type(error).__name__}); "
                               "check dp.history() before trying again: the request may have been charged.",
                               charged=None) from None

    # ----------------------------------------------------------------------------------- reading
    def datasets(self) -> list[dict]:
        """The datasets this user may query, with their policies."""
        try:
            return self.get("api/datasets")
        except _NoAnswer:
            raise self._silent() from None

    def describe(self, name: str) -> dict:
        return self._read(f"api/datasets/{_quote(name)}")

    def status(self, name: str):
        return self._read(f"api/datasets/{_quote(name)}/budget")

    def history(self, name: str, *, last: int | None = None):
        found = self._read(f"api/datasets/{_quote(name)}/history", last=last)
        return found["record"], found["charges"]

    def verify(self, name: str):
        return self._read(f"api/datasets/{_quote(name)}/history", verify=1)

    def _read(self, path: str, **params):
        try:
            return self.get(path, **params)
        except _NoAnswer:
            raise self._silent() from None

    def _silent(self) -> StewardError:
        return StewardError(f"the steward at {self.url} did not answer within {self.timeout:g} s; try again "
                            "later, or raise the timeout: dp.connect(timeout=120).")

    # ---------------------------------------------------------------------------------- releases
    def release(self, name: str, request: dict) -> Released:
        """Send one release; on a lost answer, look it up instead of sending it again."""
        request = {**request, "request_id": uuid.uuid4().hex}
        try:
            return self._call("POST", f"api/datasets/{_quote(name)}/release", request)
        except _NoAnswer:
            return self._recover(name, request["request_id"])

    def _recover(self, name: str, request_id: str) -> Released:
        deadline = time.monotonic() + RECOVER_SECONDS
        while True:
            try:
                found = self.get(f"api/requests/{request_id}")
            except (_NoAnswer, StewardError):
                raise StewardError(
                    f"the steward did not answer a release of '{name}' in time, and cannot be asked whether it "
                    f"charged it. It was not sent again, so it cannot be charged twice; dp.history('{name}') "
                    "shows every charge once the steward answers.", charged=None) from None
            state = found["state"]
            if state == "done":
                return found["released"]
            if state == "failed":
                raise _ERRORS.get(found.get("type"), StewardError)(found["error"])
            if state == "unknown":
                raise StewardError(
                    f"the steward has no record of this release of '{name}': it was not charged, or the steward "
                    f"restarted after charging it; dp.history('{name}') shows every charge.", charged=None)
            if time.monotonic() > deadline:
                raise StewardError(
                    f"the steward is still working on this release of '{name}' after {RECOVER_SECONDS:g} s. It "
                    f"was not sent again; dp.history('{name}') shows its charge when it is made.", charged=None)
            time.sleep(0.2)


@dataclass(frozen=True)
class RemoteSource:
    """Where a remote dataset's releases are made: ``name`` on the steward behind ``client``."""

    client: StewardClient
    name: str
    user: str

    def release(self, measures, *, where, by, epsilon, delta, notes, what, scope: Scope) -> Released:
        key = (self.name, self.user)
        accuracy = scope.accuracy
        request = {
            "measures": wire.encode(tuple(measures)), "where": wire.encode(tuple(where)),
            "by": wire.encode(tuple(by)), "epsilon": wire.encode(epsilon), "delta": wire.encode(delta),
            "notes": [str(n) for n in notes], "what": what,
            "scope": {
                "epsilon": wire.encode(scope_value(scope, "epsilon")),
                "delta": wire.encode(scope_value(scope, "delta")),
                "purpose": scope_value(scope, "purpose"),
                "accuracy": None if accuracy is None else [accuracy.value, accuracy.relative],
                "explain": scope.explain is not None,
                # The cell's --budget caps, each with what the cell has spent on this dataset so far.
                "caps": [{"budget": each.budget, "spent_units": each.spent_units.get(key, 0)}
                         for each in scope.chain() if each.budget is not None],
            },
        }
        return self.client.release(self.name, request)


# ----------------------------------------------------------------------------------- connection
_connection: StewardClient | None = None


def connect(url: str | None = None, *, token: str | None = None, timeout: float | None = None) -> StewardClient:
    """Connect this kernel to a steward (isolated mode).

    Parameters
    ----------
    url : str, optional
        The steward's URL; ``$DPMAGIC_STEWARD_URL`` by default (a hub sets it for its users).
    token : str, optional
        ``$DPMAGIC_STEWARD_TOKEN``, else ``$JUPYTERHUB_API_TOKEN`` by default.
    timeout : float, optional
        Seconds to wait for an answer (60 by default).

    Returns
    -------
    StewardClient
    """
    global _connection
    url = url or os.environ.get(STEWARD_URL_ENV)
    if not url:
        raise PolicyError(f"no steward to connect to: pass its URL, dp.connect('http://.../services/dpmagic/'), "
                          f"or set ${STEWARD_URL_ENV} (a JupyterHub administrator sets it for every user).")
    token = token or next((os.environ[e] for e in TOKEN_ENVS if os.environ.get(e)), None)
    _connection = StewardClient(url, token, timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
    return _connection


def connection() -> StewardClient | None:
    """The steward this kernel is connected to; connected from the environment when it names one."""
    if _connection is None and os.environ.get(STEWARD_URL_ENV):
        return connect()
    return _connection


def remote(name: str, *, url: str | None = None, token: str | None = None):
    """A private frame over dataset ``name``, which a steward holds (isolated mode).

    The frame has the same pandas API as one from :func:`jupyter_dpmagic.protect`; releases,
    budgets and histories come from the steward, which alone sees the rows.

    Parameters
    ----------
    name : str
        The dataset's name on the steward (``dp.datasets()`` lists them).
    url, token : str, optional
        As for :func:`connect`; by default the current connection, or the environment's.

    Returns
    -------
    PrivateFrame
    """
    from . import hooks, live
    from .frame import PrivateFrame

    if not isinstance(name, str) or not name:
        raise PolicyError("dp.remote() takes a dataset name, e.g. dp.remote('visits'); dp.datasets() lists them.")
    client = connect(url, token=token) if url or token else connection()
    if client is None:
        raise PolicyError(f"no steward is connected: dp.connect(url) first, or set ${STEWARD_URL_ENV}.")
    hooks.install()
    live.install()
    return PrivateFrame(get_session().add_remote(_dataset(client, name)))


def _dataset(client: StewardClient, name: str) -> Dataset:
    meta = client.describe(name)
    # No rows: the frame gives the proxies column names and dtypes (a categorical dtype travels as
    # "category", without its categories, which would be data).
    frame = empty_frame(meta["columns"])
    dataset = Dataset(
        name=meta["name"], user=meta["user"], frame=frame, policy=Policy.from_dict(meta["policy"]),
        unit=meta["privacy_unit"], max_rows=meta["max_rows_per_unit"], record=meta["record"], engine=None,
        schema={c: dtype_kind(t) for c, t in frame.dtypes.items()}, max_groups=meta["max_groups_per_unit"],
        remote=RemoteSource(client, meta["name"], meta["user"]))
    for column, (low, high, epsilon, charge_id) in meta["estimates"].items():
        dataset.estimates[column] = EstimatedBounds(column, low, high, epsilon, charge_id)
    return dataset


def _quote(name) -> str:
    if not isinstance(name, str):
        raise PolicyError(f"a dataset name is text, e.g. 'visits' (got {type(name).__name__}).")
    return urllib.parse.quote(name, safe="")


def _refusal(error: urllib.error.HTTPError, url: str) -> PrivacyError:
    try:
        body = json.loads(error.read() or b"{}")
    except ValueError:
        body = {}
    message = body.get("error") or f"HTTP {error.code} {error.reason}"
    if error.code in (401, 403):
        return StewardError(f"the steward at {url} refused this request: {message}")
    if error.code == 404 and "error" not in body:
        return StewardError(f"no steward answers at {url} (HTTP 404); check the URL (%dp connect URL).")
    return _ERRORS.get(body.get("type"), StewardError)(message)
