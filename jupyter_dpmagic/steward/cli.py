"""``jupyter-dpmagic-steward``: register datasets and serve them (``python -m jupyter_dpmagic.steward``).

Run it as the steward's own operating-system account, which alone can read the data files, the
registry and the ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from ..errors import PrivacyError
from ..policy import Policy
from ..session import Session
from .registry import Registry, new_entry, read_table

__all__ = ["main"]

REGISTRY_ENV = "DPMAGIC_STEWARD_REGISTRY"
LEDGER_ENV = "DPMAGIC_LEDGER"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jupyter-dpmagic-steward",
                                     description="Hold private datasets and their budget ledger; answer DP queries.")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub):
        sub.add_argument("--registry", default=os.environ.get(REGISTRY_ENV),
                         help=f"the registry file (default ${REGISTRY_ENV})")

    register = commands.add_parser("register", help="register a CSV or Parquet file as a dataset")
    common(register)
    register.add_argument("--ledger", default=os.environ.get(LEDGER_ENV),
                          help=f"the ledger: a SQLite path or postgresql:// URL (default ${LEDGER_ENV})")
    register.add_argument("--name", required=True, help="the dataset's name, as analysts will open it")
    register.add_argument("--file", required=True, help="the data: a .csv or .parquet file")
    register.add_argument("--format", choices=("csv", "parquet"), help="when the file's suffix does not say")
    register.add_argument("--engine", choices=("pandas", "spark"), default="pandas",
                          help="where releases are computed: in the steward's memory, or as Spark jobs "
                               "(master from $DPMAGIC_SPARK_MASTER, local[*] by default)")
    register.add_argument("--epsilon", type=float, required=True,
                          help="the dataset-wide budget: what all analysts together may spend")
    register.add_argument("--per-user-epsilon", type=float, required=True, help="each analyst's budget")
    register.add_argument("--delta", type=float, default=0.0,
                          help="0: pure epsilon (Laplace); >0: zCDP budgets (Gaussian noise, partition selection)")
    register.add_argument("--policy", help="a policy TOML file (tiers, purposes, bounds, categories)")
    register.add_argument("--privacy-unit", help="the column naming the person, when one has several rows")
    register.add_argument("--max-rows-per-unit", type=int, default=1)
    register.add_argument("--max-groups-per-unit", type=int)
    register.add_argument("--allow", action="append", default=[], metavar="USER|group:NAME",
                          help="who may query it (repeatable); by default every user the hub lets in")
    register.add_argument("--description", default="", help="one line shown in dp.datasets()")

    listing = commands.add_parser("list", help="list the registered datasets")
    common(listing)

    serve = commands.add_parser("serve", help="answer analysts' queries (as a JupyterHub service)")
    common(serve)
    serve.add_argument("--ledger", default=os.environ.get(LEDGER_ENV))
    serve.add_argument("--ip", help="default: from $JUPYTERHUB_SERVICE_URL, else 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: from $JUPYTERHUB_SERVICE_URL, else 10101")
    serve.add_argument("--prefix", help="URL prefix (default $JUPYTERHUB_SERVICE_PREFIX, else /)")
    serve.add_argument("--service-name", help="the hub's name for this service (default $JUPYTERHUB_SERVICE_NAME)")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if not args.registry:
        print(f"give the registry file: --registry PATH (or ${REGISTRY_ENV})", file=sys.stderr)
        return 2
    try:
        return {"register": _register, "list": _list, "serve": _serve}[args.command](args)
    except PrivacyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _register(args) -> int:
    if not args.ledger:
        print(f"give the ledger: --ledger PATH_OR_URL (or ${LEDGER_ENV})", file=sys.stderr)
        return 2
    registry = Registry.load(args.registry)
    frame, kind = read_table(args.file, args.format, engine=args.engine)
    policy = Policy.from_toml(args.policy) if args.policy else Policy.builtin()
    if args.per_user_epsilon > args.epsilon:
        print("--per-user-epsilon is more than the dataset-wide --epsilon; no analyst could spend it all.",
              file=sys.stderr)
        return 2
    # The checks protect() makes (columns, privacy unit, constant or empty columns...), on a ledger
    # of their own, so that a refused registration leaves no budget behind.
    with tempfile.TemporaryDirectory() as scratch:
        check = Session(ledger=str(Path(scratch) / "check.sqlite"))
        checked = check.protect(frame, name=args.name, epsilon=args.per_user_epsilon, delta=args.delta,
                                policy=policy, privacy_unit=args.privacy_unit,
                                max_rows_per_unit=args.max_rows_per_unit,
                                max_groups_per_unit=args.max_groups_per_unit, user="registration", keep=False)
        check.accountant.ledger.close()
    entry = new_entry(name=args.name, file=args.file, kind=kind, table=frame, engine=args.engine,
                      epsilon=args.epsilon,
                      per_user_epsilon=args.per_user_epsilon, delta=args.delta, policy=policy.to_dict(),
                      privacy_unit=args.privacy_unit, max_rows_per_unit=args.max_rows_per_unit,
                      max_groups_per_unit=args.max_groups_per_unit, allow=tuple(args.allow),
                      description=args.description)
    if args.name in registry.entries:
        registry.add(entry)  # refuses, saying why
    Session(ledger=args.ledger).accountant.open_dataset(name=args.name, epsilon=args.epsilon, delta=args.delta)
    registry.add(entry)
    print(f"registered '{args.name}': {len(checked.schema)} columns from {entry.file}; ε={args.epsilon:g} for all "
          f"analysts together, ε={args.per_user_epsilon:g} each" + (f", δ={args.delta:g}" if args.delta else ""))
    return 0


def _list(args) -> int:
    registry = Registry.load(args.registry)
    for entry in registry.entries.values():
        who = ", ".join(entry.allow) or "every hub user with access"
        print(f"{entry.name}\t{entry.file}\tε={entry.epsilon:g} (each {entry.per_user_epsilon:g}), "
              f"δ={entry.delta:g}\t{who}")
    if not registry.entries:
        print("no datasets registered")
    return 0


def _serve(args) -> int:
    from tornado.httpserver import HTTPServer

    from .auth import HubIdentity
    from .service import make_app
    from .steward import Steward

    if not args.ledger:
        print(f"give the ledger: --ledger PATH_OR_URL (or ${LEDGER_ENV})", file=sys.stderr)
        return 2
    # Our own lines and the access log (method, path, status); other libraries only when they warn.
    logging.basicConfig(level=logging.WARNING, format="[steward %(asctime)s %(levelname)s] %(message)s")
    for name in ("jupyter_dpmagic.steward", "tornado.access"):
        logging.getLogger(name).setLevel(logging.INFO)
    service_url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", ""))
    ip = args.ip or service_url.hostname or "127.0.0.1"
    port = args.port or service_url.port or 10101
    prefix = args.prefix or os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    steward = Steward(Registry.load(args.registry), ledger=args.ledger)
    app = make_app(steward, HubIdentity(args.service_name), prefix=prefix)

    async def run():
        server = HTTPServer(app, xheaders=True)
        server.listen(port, address=ip)
        logging.getLogger("jupyter_dpmagic.steward").info("serving %d dataset(s) on http://%s:%d%s",
                                                           len(steward.registry.entries), ip, port, prefix)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.stop()

    asyncio.run(run())
    return 0
