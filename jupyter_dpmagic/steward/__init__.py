"""Isolated mode, the data holder's side: a service that holds datasets and their budget ledger.

On a JupyterHub the steward runs as a hub service under its own operating-system account, which
alone can read the data and the ledger. Analysts' kernels send query plans (``dp.remote``); the
steward checks them with the same rules as guardrail mode, charges the analyst's budget and the
dataset-wide cap, and answers with the DP release only. See docs/hub.md.
"""

from .registry import Entry, Registry
from .steward import Analyst, Steward

__all__ = ["Analyst", "Entry", "Registry", "Steward"]
