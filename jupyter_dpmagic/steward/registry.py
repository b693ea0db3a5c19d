"""The datasets a steward serves: a JSON file only the steward's account can read.

Each entry names a CSV or Parquet file, its policy, the dataset-wide budget and each analyst's
budget. The data's fingerprint is kept at registration: a file changed afterwards is not served
(its budget was set for other data), until it is registered again under a new name.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ..errors import PolicyError
from ..engine.local import fingerprint

__all__ = ["Entry", "Registry", "read_table", "table_fingerprint", "spark_session"]

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Entry:
    """One registered dataset (what ``jupyter-dpmagic-steward register`` was told)."""

    name: str
    file: str
    format: str
    fingerprint: str
    epsilon: float  # the dataset-wide budget: all analysts together
    per_user_epsilon: float
    delta: float
    policy: dict
    privacy_unit: str | None = None
    max_rows_per_unit: int = 1
    max_groups_per_unit: int | None = None
    allow: tuple = ()  # user names and "group:<name>"; empty: every user the hub lets in
    registered: str = ""
    description: str = ""
    salt: str = ""
    engine: str = "pandas"  # or "spark": the table stays in Spark, releases run as Spark jobs

    @property
    def data_key(self) -> str:
        """What the ledger records for this data: its fingerprint, salted.

        Analysts see the ledger's hash chain, which covers this value; with the bare fingerprint
        (a hash of the data) someone who guessed the whole table could confirm the guess.
        """
        return hashlib.sha256(f"{self.salt}:{self.fingerprint}".encode()).hexdigest()

    def allows(self, user: str, groups) -> bool:
        if not self.allow:
            return True
        return user in self.allow or any(f"group:{g}" in self.allow for g in groups)


@dataclass
class Registry:
    """The registry file at ``path`` (created on first registration, mode 0600)."""

    path: Path
    entries: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path) -> "Registry":
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            raw = json.loads(path.read_text())
            entries = {name: Entry(**{**data, "allow": tuple(data.get("allow", ()))})
                       for name, data in raw["datasets"].items()}
        except (ValueError, KeyError, TypeError) as error:
            raise PolicyError(f"the registry {path} cannot be read ({error}); it is written only by "
                              "`jupyter-dpmagic-steward register`.") from None
        return cls(path, entries)

    def add(self, entry: Entry) -> None:
        if entry.name in self.entries:
            raise PolicyError(f"a dataset named '{entry.name}' is registered already; its budget is fixed. Register "
                              "new or changed data under a new name (e.g. --name visits_2027).")
        self.entries[entry.name] = entry
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"datasets": {n: asdict(e) for n, e in sorted(self.entries.items())}}, indent=2)
        # Written to a private temporary file and renamed, so that a crash leaves the old registry whole.
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".registry-")
        try:
            os.fchmod(handle, 0o600)
            with os.fdopen(handle, "w") as out:
                out.write(body)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def read_table(path, kind: str | None = None, *, engine: str = "pandas", spark=None):
    """The table in a CSV or Parquet file (a pandas frame, or a Spark engine over it), and its format."""
    path = Path(path)
    kind = kind or FORMATS.get(path.suffix.lower())
    if kind is None:
        raise PolicyError(f"{path.name}: the steward reads .csv and .parquet files; convert it, or pass "
                          "--format csv|parquet.")
    if not path.exists():
        raise PolicyError(f"no file {path}; give the path of the data file (--file).")
    if engine == "spark":
        from ..sources import source

        session = spark or spark_session()
        frame = session.read.parquet(str(path)) if kind == "parquet" else \
            session.read.csv(str(path), header=True, inferSchema=True)
        return source(frame, engine="spark"), kind
    try:
        frame = pd.read_parquet(path) if kind == "parquet" else pd.read_csv(path)
    except ImportError:
        raise PolicyError("reading Parquet needs pyarrow: pip install pyarrow.") from None
    return frame, kind


def table_fingerprint(table) -> str:
    """The content hash of a table read by :func:`read_table` (each engine computes its own)."""
    return fingerprint(table) if isinstance(table, pd.DataFrame) else table.fingerprint()


def spark_session(master: str | None = None):
    """The steward's Spark session: local by default, bound to the loopback interface, no web UI."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise PolicyError("--engine spark needs pyspark (pip install pyspark) and Java 17 or newer.") from None
    builder = SparkSession.builder.appName("jupyter-dpmagic-steward")
    if master or not SparkSession.getActiveSession():
        builder = builder.master(master or os.environ.get("DPMAGIC_SPARK_MASTER", "local[*]"))
    for key, value in {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                       "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def new_entry(*, name: str, file, kind: str, table, **settings) -> Entry:
    return Entry(name=name, file=str(Path(file).resolve()), format=kind, fingerprint=table_fingerprint(table),
                 registered=datetime.now(timezone.utc).isoformat(timespec="seconds"), salt=secrets.token_hex(32),
                 **settings)
