"""Tables shown by ``%dp budget``, ``%dp history`` and ``%dp policy``: plain text and HTML."""

from __future__ import annotations

import html
from collections.abc import Sequence

__all__ = ["Table", "HistoryTable", "ChainTable", "PolicyTable", "BudgetsTable", "DatasetsTable"]


class Table:
    """A titled table that renders as aligned text (``repr``) and as HTML (``_repr_html_``)."""

    def __init__(self, title: str, headers: Sequence[str], rows: Sequence[Sequence], footer: str = ""):
        self.title, self.headers, self.footer = title, list(headers), footer
        self.rows = [[("" if v is None else str(v)) for v in row] for row in rows]

    def __repr__(self) -> str:
        grid = [self.headers, *self.rows]
        widths = [max(len(r[i]) for r in grid) for i in range(len(self.headers))]
        lines = [self.title]
        for n, row in enumerate(grid):
            lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        if not self.rows:
            lines.append("(none)")
        if self.footer:
            lines.append(self.footer)
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(v)}</td>" for v in row)
                       + "</tr>" for row in self.rows)
        if not self.rows:
            body = f"<tr><td colspan='{len(self.headers)}'>(none)</td></tr>"
        footer = f"<p style='font-size:0.85em'>{html.escape(self.footer)}</p>" if self.footer else ""
        return (f"<div class='dpmagic-table'><strong>{html.escape(self.title)}</strong><table><thead><tr>"
                f"{head}</tr></thead><tbody>{body}</tbody></table>{footer}</div>")


class HistoryTable(Table):
    """The charges recorded against one budget, oldest first."""

    def __init__(self, record, charges):
        self.record, self.charges = record, list(charges)
        rows = []
        for c in self.charges:
            cost = f"{c.epsilon:.4g}" + (f" (ρ={c.rho:.3g})" if c.rho is not None else "")
            rows.append([c.id, c.time[:19].replace("T", " "), c.query, c.mechanism, cost, c.tier, c.purpose])
        super().__init__(f"History of '{record.name}' for {record.user}",
                         ["#", "time (UTC)", "query", "mechanism", "ε", "tier", "purpose"], rows,
                         footer=f"{len(rows)} release(s)")


class ChainTable(Table):
    """What verifying a budget's hash chain found (``%dp history NAME --verify``).

    ``report`` is the ledger's :class:`~jupyter_dpmagic.ledger.ChainReport`; ``ok`` and ``summary``
    repeat its verdict. An intact chain shows one line; a broken one lists each problem with the id of
    the charge concerned.
    """

    def __init__(self, report):
        self.report = report
        self.ok, self.summary = report.ok, report.summary
        rows = [["budget row" if p.charge_id is None else f"#{p.charge_id}", p.kind, p.detail]
                for p in report.problems]
        title = f"Hash chain of '{report.name}' for {report.user}: " + (
            self.summary if self.ok else f"chain broken ({len(rows)} problem(s))")
        super().__init__(title, ["charge", "found", "detail"], rows,
                         footer=f"{report.charges} charge(s); head {report.head_hash[:16] or '(none)'}")

    def __repr__(self) -> str:
        if self.ok:
            return f"{self.title}\n{self.footer}"
        return super().__repr__()

    __str__ = __repr__

    def _repr_html_(self) -> str:
        if self.ok:
            return (f"<div class='dpmagic-table'><strong>{html.escape(self.title)}</strong>"
                    f"<p style='font-size:0.85em'>{html.escape(self.footer)}</p></div>")
        return super()._repr_html_()


class BudgetsTable(Table):
    """Budgets of several datasets (``%dp budget`` without a name)."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        rows = [[s.name, s.mode, f"{s.epsilon_total:g}", f"{s.epsilon_spent:.4g}", f"{s.epsilon_remaining:.4g}",
                 f"{s.delta_total:g}", s.releases] for s in self.statuses]
        user = self.statuses[0].user if self.statuses else ""
        super().__init__(f"Privacy budgets{' of ' + user if user else ''}",
                         ["dataset", "accounting", "ε total", "ε spent", "ε left", "δ", "releases"], rows)


class PolicyTable(Table):
    """Every column of a protected dataset with its resolved tier, bounds and default epsilon."""

    def __init__(self, dataset):
        policy = dataset.policy
        purposes = list(policy.purposes)
        rows = []
        for name in dataset.frame.columns:
            col = dataset.column(name)
            if col.tier == "identifier":
                defaults = ["never released"] * len(purposes)
            else:
                defaults = [f"{policy.default_epsilon(purpose=p, tiers=[col.tier]):.4g}" for p in purposes]
            bounds = _bounds_text(dataset, name, col)
            cats = "" if not col.categories else ", ".join(map(str, col.categories[:6])) + \
                (" ..." if len(col.categories) > 6 else "")
            rows.append([name, col.tier, col.tier_source, bounds, cats, *defaults])
        tiers = ", ".join(f"{t.name} x{t.multiplier:g}" + (f" (max {t.max_share:.0%} of budget)" if t.max_share else "")
                          for t in policy.tiers.values() if t.multiplier is not None)
        footer = (f"default purpose: {policy.default_purpose}; purposes: "
                  + ", ".join(_purpose_text(p) for p in policy.purposes.values())
                  + f"; tiers scale it: {tiers}; identifiers are never released.")
        super().__init__(f"Policy of '{dataset.name}'",
                         ["column", "tier", "why", "bounds", "categories", *[f"ε {p}" for p in purposes]],
                         rows, footer=footer)


def _bounds_text(dataset, name: str, col) -> str:
    """Declared bounds, bounds a DP estimate released, or what a release without them will do."""
    if col.bounds is not None:
        return f"[{col.bounds[0]:g}, {col.bounds[1]:g}]"
    if dataset.schema.get(name) not in ("numeric", "bool") or col.tier == "identifier":
        return ""
    found = dataset.estimates.get(name)
    if found is not None:
        return f"estimated [{found.low:.4g}, {found.high:.4g}]"
    if dataset.policy.tier(col.tier).missing_bounds == "estimate":
        return "estimated on first use"
    return "none: releases refused"


def _purpose_text(purpose) -> str:
    """``publish ε=0.5/query (30% of the budget reserved)``; the reserve only when there is one."""
    text = f"{purpose.name} ε={purpose.epsilon:g}/query"
    if purpose.reserve > 0:
        # In brackets: the footer already separates purposes with commas.
        text += f" ({purpose.reserve * 100:.4g}% of the budget reserved)"
    return text


class DatasetsTable(Table):
    """The datasets a steward lets this user query (``dp.datasets()``, ``%dp datasets``)."""

    def __init__(self, found, url: str):
        self.datasets = list(found)
        rows = []
        for d in self.datasets:
            delta = f", δ={d['delta']:g}" if d["delta"] else ""
            rows.append([d["name"], ", ".join(d["columns"]), d["privacy_unit"] or "row",
                         f"{d['per_user_epsilon']:g}{delta}", f"{d['epsilon_left']:.4g} of {d['epsilon']:g}",
                         d.get("description", "")])
        super().__init__(f"Datasets at {url}",
                         ["dataset", "columns", "privacy unit", "your ε", "ε left for all analysts", "description"],
                         rows,
                         footer="Open one with dp.remote('NAME'); dp.policy('NAME') then shows its policy.")
