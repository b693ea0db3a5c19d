"""The live budget: what the kernel tells the JupyterLab sidebar and the widget meters, and when.

The protocol is written down in ``docs/live-budget.md``. In short: after each cell that spent (and at
most every half second during a long one) the kernel opens a fresh comm to the sidebar's target with
the budgets of the datasets it protects, and closes it at once; the sidebar asks for the same when
it attaches to a kernel. Only budgets and release metadata travel, never a value of the data.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterable

from .accountant import BudgetStatus
from .errors import PolicyError
from .session import Session, current_user

__all__ = ["PROTOCOL", "SIDEBAR_TARGET", "STATE_TARGET", "LiveBudget", "payload", "spent_share", "level",
           "get_live_budget"]

PROTOCOL = 1
SIDEBAR_TARGET = "jupyter_dpmagic.budget"
STATE_TARGET = "jupyter_dpmagic.state"
RECENT_RELEASES = 10
# A cell running longer than this pushes on each charge, at most this often; shorter cells push once,
# at their end, so that a loop of releases does not pay for a message each.
LONG_CELL_SECONDS = 0.5
WARNING_SHARE = 0.8
EXHAUSTED_SLACK = 1e-9
# What a state request may name: enough for any notebook, small enough that a request cannot make
# the kernel read the whole ledger.
MAX_REQUESTED = 100


def spent_share(status: BudgetStatus) -> float:
    """The share of the budget spent, as the bar shows it (for zCDP budgets: the share asked for)."""
    return min(1.0, max(0.0, status.epsilon_share_spent / status.epsilon_total))


def level(status: BudgetStatus) -> str:
    """``"ok"``, ``"warning"`` (from 80% spent) or ``"exhausted"`` (nothing left to ask for).

    The sidebar applies the same rule (labextension/src/status.ts).
    """
    share = spent_share(status)
    if share >= 1.0 - EXHAUSTED_SLACK:
        return "exhausted"
    # The slack counts eight releases of 0.1 out of 1.0 (0.7999999999999999 in floats) as 80%.
    return "warning" if share >= WARNING_SHARE - EXHAUSTED_SLACK else "ok"


def statuses(session: Session, names: Iterable[str] = (), *, with_protected: bool = True
             ) -> list[tuple[BudgetStatus, bool]]:
    """The budgets of the datasets protected here (unless not ``with_protected``) and of ``names``.

    Returns ``(status, protected)`` pairs sorted by name; ``protected`` says whether the dataset is
    protected in this process (others come from the ledger, e.g. after a kernel restart). Names the
    ledger does not know are left out.
    """
    from .api import budget

    user = current_user()
    # A steward's dataset belongs to the hub user the steward knows, whatever this process's user is.
    protected = {name for name, dataset in session.datasets.items()
                 if dataset.user == user or dataset.remote is not None}
    found = []
    for name in sorted((protected if with_protected else set()) | set(names)):
        try:
            found.append((budget(name), name in protected))
        except PolicyError:
            continue  # a name the ledger does not know (renamed, another ledger): nothing to show
    return found


def payload(session: Session, *, reason: str, names: Iterable[str] = ()) -> dict:
    """The message the sidebar gets: the budgets of this kernel's datasets (and of ``names``)."""
    return {
        "protocol": PROTOCOL,
        "reason": reason,
        "sent_at": time.time() * 1000.0,
        "user": current_user(),
        "datasets": [_dataset(session, status, protected) for status, protected in statuses(session, names)],
    }


def _dataset(session: Session, status: BudgetStatus, protected: bool) -> dict:
    from .api import charges

    _, history = charges(status.name, last=RECENT_RELEASES)
    return {
        "name": status.name,
        "user": status.user,
        "protected": protected,
        "mode": status.mode,
        "epsilon_total": _number(status.epsilon_total),
        "epsilon_spent": _number(status.epsilon_share_spent),
        "epsilon_guarantee": _number(status.epsilon_spent),
        "delta_total": _number(status.delta_total),
        "delta_spent": _number(status.delta_spent),
        "releases": status.releases,
        "tiers": [
            {"name": tier, "spent": _number(status.tier_asked.get(tier, 0.0)), "remaining": _number(left),
             "cap": status.tier_shares.get(tier)}
            for tier, left in status.tier_remaining.items()
        ],
        "purposes": [
            {"name": purpose, "spent": _number(status.purpose_asked.get(purpose, 0.0)),
             "remaining": _number(left), "reserved": status.purpose_reserves.get(purpose)}
            for purpose, left in status.purpose_remaining.items()
        ],
        "recent": [
            {"id": charge.id, "time": charge.time, "query": charge.query, "mechanism": charge.mechanism,
             "epsilon": _number(charge.epsilon), "delta": _number(charge.delta), "purpose": charge.purpose,
             "tier": charge.tier, "accuracy": session.accuracies.get(charge.id) or None}
            for charge in reversed(history)
        ],
    }


def _number(value: float) -> float:
    # JSON has no NaN or infinity; budgets never hold them, but a payload must never fail to send.
    value = float(value)
    return value if math.isfinite(value) else 0.0


class LiveBudget:
    """Keeps the sidebar and the widget meters of one kernel up to date.

    Parameters
    ----------
    session : Session
        The session whose charges trigger updates.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._lock = threading.Lock()
        self._shell = None
        self._kernel = False
        self._sidebar_seen = False
        self._changed_in_cell = False
        self._cell_started: float | None = None
        self._last_push = 0.0
        self._meters: weakref.WeakSet = weakref.WeakSet()
        session.watch(self._changed)

    # ------------------------------------------------------------------------------------ wiring
    def install(self, shell) -> None:
        """Follow ``shell``'s cells and, in a kernel, answer the sidebar; tell it the extension is loaded."""
        if shell is None or shell is self._shell:
            return
        self._shell = shell
        shell.events.register("pre_run_cell", self._cell_starts)
        shell.events.register("post_run_cell", self._cell_ends)
        self._kernel = getattr(shell, "kernel", None) is not None
        if self._kernel:
            import comm

            comm.get_comm_manager().register_target(STATE_TARGET, self._answer_state_request)
            # A sidebar that asked before the extension was loaded was told "not loaded"; this tells
            # it to ask again (it names the datasets it showed before a restart).
            self._send(payload(self.session, reason="loaded"))

    @property
    def in_kernel(self) -> bool:
        """Whether this runs in a Jupyter kernel (where comms and widgets reach a frontend)."""
        return self._kernel

    def add_meter(self, meter) -> None:
        """Refresh ``meter`` (anything with ``refresh()``) whenever the sidebar would be told."""
        self._meters.add(meter)

    # ------------------------------------------------------------------------------------ events
    def _cell_starts(self, *_) -> None:
        self._cell_started = time.monotonic()

    def _cell_ends(self, *_) -> None:
        self._cell_started = None
        if self._changed_in_cell:
            self.push()

    def _changed(self) -> None:
        self._changed_in_cell = True
        started = self._cell_started
        now = time.monotonic()
        if started is None or now - max(started, self._last_push) >= LONG_CELL_SECONDS:
            # Outside a cell (a script, a thread) or in a long one: nobody will push at its end soon.
            self.push()

    def push(self) -> None:
        """Tell the sidebar and every meter the current budgets now."""
        with self._lock:
            self._changed_in_cell = False
            self._last_push = time.monotonic()
        for meter in list(self._meters):
            meter.refresh()
        if self._kernel and self._sidebar_seen:
            self._send(payload(self.session, reason="release"))

    def _answer_state_request(self, channel, message) -> None:
        data = (message.get("content") or {}).get("data") or {}
        names = data.get("datasets") if isinstance(data, dict) else None
        wanted = [n for n in names[:MAX_REQUESTED] if isinstance(n, str)] if isinstance(names, list) else []
        self._sidebar_seen = True
        try:
            channel.send(payload(self.session, reason="state", names=wanted))
        finally:
            channel.close()

    @staticmethod
    def _send(message: dict) -> None:
        import comm

        # A fresh comm per update: one kept open would be silently dead after a page reload.
        channel = comm.create_comm(target_name=SIDEBAR_TARGET, data=message)
        channel.close()


_live: LiveBudget | None = None
_live_lock = threading.Lock()


def get_live_budget() -> LiveBudget:
    """The process-wide live budget, following the process-wide session."""
    from .session import get_session

    global _live
    with _live_lock:
        if _live is None:
            _live = LiveBudget(get_session())
        return _live


def install(shell=None) -> LiveBudget:
    """Install the live budget in ``shell`` (default: the running IPython, if any)."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            get_ipython = None
        shell = get_ipython() if get_ipython else None
    live = get_live_budget()
    live.install(shell)
    return live
