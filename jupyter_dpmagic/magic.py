"""IPython magics: ``%%dp`` runs a cell where private frames may release; ``%dp ...`` subcommands.

Thin on purpose: this module parses options and calls the library.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex

from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Unicode, observe

from . import hooks, live
from .api import budget_widget, datasets, history, policy, protect
from .context import spending
from .explain import explain
from .steward_client import connect
from .errors import PolicyError, close_match_hint
from .session import get_session

__all__ = ["DPMagics", "load_ipython_extension"]

CELL_USAGE = "%%dp [--epsilon E | --accuracy A[%]] [--delta D] [--purpose NAME] [--budget CAP]"


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as PolicyError instead of exiting the kernel."""

    def error(self, message):
        raise PolicyError(f"{message}. Usage: {self.format_usage().strip().removeprefix('usage: ')}")


def _cell_parser() -> _Parser:
    parser = _Parser(prog="%%dp", add_help=False)
    parser.add_argument("--epsilon", type=float, help="epsilon of each release in the cell")
    parser.add_argument("--delta", type=float, help="delta of each release (approximate budgets only)")
    parser.add_argument("--purpose", help="purpose whose per-query epsilon is the default")
    parser.add_argument("--budget", type=float, help="the most the cell may spend per dataset, in epsilon")
    parser.add_argument("--accuracy", help="instead of --epsilon: the 95%% half-width each release must meet "
                                           "(absolute, or N%% of the bounds' width)")
    return parser


def _protect_parser() -> _Parser:
    parser = _Parser(prog="%dp protect", add_help=False)
    parser.add_argument("var", help="name of a DataFrame variable; it is replaced by the private frame")
    parser.add_argument("--name", required=True)
    parser.add_argument("--epsilon", type=float, required=True)
    parser.add_argument("--delta", type=float, default=0.0)
    parser.add_argument("--policy", help="a policy TOML file")
    parser.add_argument("--unit", help="the column naming the person (privacy unit)")
    parser.add_argument("--max-rows", type=int, default=1, dest="max_rows")
    parser.add_argument("--max-groups", type=int, default=None, dest="max_groups")
    parser.add_argument("--bounds", action="append", default=[], metavar="COL=LOW:HIGH")
    parser.add_argument("--categories", action="append", default=[], metavar="COL=A,B,C")
    return parser


def _name_parser(command: str) -> _Parser:
    parser = _Parser(prog=f"%dp {command}", add_help=False)
    parser.add_argument("name", nargs="?", help="dataset name (optional when one dataset is protected)")
    return parser


def _history_parser() -> _Parser:
    parser = _name_parser("history")
    parser.add_argument("--verify", action="store_true",
                        help="check the hash chain of the charges and the budget's totals instead")
    return parser


SUBCOMMANDS = ("protect", "budget", "history", "policy", "explain", "connect", "datasets")
_EXPLAIN_OPTION = re.compile(r"^\s*--(epsilon|delta|purpose|accuracy)(?:=|\s+)(\S+)")
_CELL_PARSER = _cell_parser()


@magics_class
class DPMagics(Magics):
    """``%%dp`` cells and ``%dp`` subcommands (protect, budget, history, policy)."""

    ledger = Unicode(
        "", help="Where the budget ledger lives (a SQLite file path). $DPMAGIC_LEDGER wins over this; "
                 "empty means a file in the Jupyter data directory.").tag(config=True)

    def __init__(self, shell=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        get_session().configure(ledger=self.ledger)

    @observe("ledger")
    def _ledger_changed(self, change):
        get_session().configure(ledger=change["new"])

    @line_cell_magic
    def dp(self, line: str, cell: str | None = None):
        """Differential privacy for pandas.

        As a cell magic, ``%%dp [--epsilon E] [--delta D] [--purpose NAME] [--budget CAP]`` runs the cell
        with private frames allowed to release DP values. As a line magic:

        - ``%dp protect VAR --name NAME --epsilon E [--delta D] [--policy FILE] [--unit COL --max-rows K]
          [--bounds COL=LOW:HIGH ...] [--categories COL=A,B ...]``
        - ``%dp budget [NAME]``, ``%dp history [NAME] [--verify]``, ``%dp policy [NAME]``
        - ``%dp explain [--epsilon E | --accuracy A] [--purpose P] EXPRESSION``: what the expression's
          releases would cost and how accurate they would be; nothing is run or charged.
        - ``%dp connect [URL] [--timeout S]``: use the steward at URL (isolated mode; by default the one
          ``$DPMAGIC_STEWARD_URL`` names) and list its datasets; ``%dp datasets`` lists them again.
        """
        if cell is not None:
            return self._cell(line, cell)
        if line.strip().split(" ", 1)[0] == "explain":
            # The rest is Python, not shell words: quotes and brackets must reach eval untouched.
            return self._explain(line.strip()[len("explain"):])
        words = _words(line)
        if not words:
            raise PolicyError("%dp needs a subcommand: " + ", ".join(SUBCOMMANDS) + f". For a cell: {CELL_USAGE}.")
        command, rest = words[0], words[1:]
        handler = getattr(self, f"_cmd_{command}", None) if command in SUBCOMMANDS else None
        if handler is None:
            raise PolicyError(f"unknown %dp subcommand '{command}'.{close_match_hint(command, SUBCOMMANDS)} "
                              f"Subcommands: {', '.join(SUBCOMMANDS)}.")
        return handler(rest)

    # ----------------------------------------------------------------------------------- the cell
    def _cell(self, line: str, cell: str):
        args = _CELL_PARSER.parse_args(_words(line))
        with spending(epsilon=args.epsilon, delta=args.delta, purpose=args.purpose, budget=args.budget,
                      accuracy=args.accuracy):
            return self._run(cell)

    def _explain(self, rest: str):
        options = {}
        while (match := _EXPLAIN_OPTION.match(rest)):
            options[match.group(1)] = match.group(2)
            rest = rest[match.end():]
        if not rest.strip():
            raise PolicyError("%dp explain needs an expression, e.g. %dp explain df['age'].mean()")
        for name in ("epsilon", "delta"):
            if name in options:
                try:
                    options[name] = float(options[name])
                except ValueError:
                    raise PolicyError(f"--{name} takes a number (got {options[name]!r}).") from None
        try:
            tree = ast.parse(rest.strip(), mode="eval")
        except SyntaxError as error:
            raise PolicyError(f"%dp explain takes one Python expression ({error.msg}), e.g. "
                              "%dp explain df['age'].mean()") from None
        code = compile(tree, "<%dp explain>", "eval")
        return explain(lambda: eval(code, self.shell.user_ns), **options)

    def _run(self, cell: str):
        """Run ``cell`` in the user namespace and return the value of its last expression.

        Executed here (as ``%%time`` does) rather than through a nested ``run_cell`` so that errors
        propagate to the outer cell and mark it as failed.
        """
        shell = self.shell
        tree = shell.compile.ast_parse(shell.transform_cell(cell))
        tree = shell.transform_ast(tree)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        namespace = shell.user_ns
        exec(shell.compile(tree, "<%%dp cell>", "exec"), namespace)
        if last is not None:
            return eval(shell.compile(last, "<%%dp cell>", "eval"), namespace)
        return None

    # -------------------------------------------------------------------------------- subcommands
    def _cmd_protect(self, words):
        args = _protect_parser().parse_args(words)
        if args.var not in self.shell.user_ns:
            raise PolicyError(f"no variable named '{args.var}' in this notebook; load the DataFrame first.")
        bounds = dict(_parse_pair(item, "--bounds", bounds=True) for item in args.bounds)
        categories = dict(_parse_pair(item, "--categories", bounds=False) for item in args.categories)
        private = protect(self.shell.user_ns[args.var], name=args.name, epsilon=args.epsilon, delta=args.delta,
                          policy=args.policy, privacy_unit=args.unit, max_rows_per_unit=args.max_rows,
                          max_groups_per_unit=args.max_groups,
                          bounds=bounds or None, categories=categories or None)
        self.shell.user_ns[args.var] = private
        return private

    def _cmd_budget(self, words):
        return budget_widget(_name_parser("budget").parse_args(words).name)

    def _cmd_history(self, words):
        args = _history_parser().parse_args(words)
        return history(self._one_name("history", [args.name] if args.name else []), verify=args.verify)

    def _cmd_connect(self, words):
        parser = _Parser(prog="%dp connect", add_help=False)
        parser.add_argument("url", nargs="?", help="the steward's URL (default: $DPMAGIC_STEWARD_URL)")
        parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for an answer")
        args = parser.parse_args(words)
        connect(args.url, timeout=args.timeout)
        return datasets()

    def _cmd_datasets(self, words):
        _Parser(prog="%dp datasets", add_help=False).parse_args(words)
        return datasets()

    def _cmd_policy(self, words):
        return policy(self._one_name("policy", words))

    def _one_name(self, command: str, words) -> str:
        args = _name_parser(command).parse_args(words)
        if args.name:
            return args.name
        names = list(get_session().datasets)
        if len(names) == 1:
            return names[0]
        if not names:
            raise PolicyError(f"no dataset is protected in this kernel; protect one first, or name it: "
                              f"%dp {command} NAME.")
        raise PolicyError(f"several datasets are protected ({', '.join(names)}); name one: %dp {command} NAME.")


def _words(line: str) -> list[str]:
    """The options of a ``%dp`` line, split as a shell would."""
    try:
        return shlex.split(line)
    except ValueError as error:  # an unclosed quote
        raise PolicyError(f"%dp could not read its options ({error}); close the quote, e.g. --name 'my data'. "
                          f"Usage: {CELL_USAGE}, or %dp SUBCOMMAND ...") from None


def _parse_pair(item: str, option: str, *, bounds: bool):
    column, sep, value = item.partition("=")
    if not sep or not column:
        example = "age=0:110" if bounds else "sex=F,M"
        raise PolicyError(f"{option} takes COLUMN={'LOW:HIGH' if bounds else 'A,B,...'}, e.g. {option} {example}.")
    if bounds:
        low, sep, high = value.partition(":")
        try:
            return column, (float(low), float(high))
        except ValueError:
            raise PolicyError(f"{option} {item}: write two numbers, e.g. {option} {column}=0:110.") from None
    return column, [v for v in value.split(",") if v]


def load_ipython_extension(ipython) -> None:
    """``%load_ext jupyter_dpmagic``: register ``%dp`` / ``%%dp``."""
    # Before the notebook's own imports, so `from sklearn.metrics import accuracy_score` in a later
    # cell already gets the version that also accepts private columns.
    hooks.install()
    ipython.register_magics(DPMagics(shell=ipython))
    live.install(ipython)
