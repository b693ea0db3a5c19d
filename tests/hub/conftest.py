"""Isolated mode end to end: a JupyterHub whose users and steward are separate OS accounts.

Select these tests with ``-m hub`` (deselect with ``-m "not hub"``). They run as root only, and need
useradd, node/npm (configurable-http-proxy is installed from npm on first use) and the PostgreSQL
server binaries; elsewhere they are skipped, unless ``DPMAGIC_REQUIRE_HUB=1``, which makes a missing
piece a failure. ``DPMAGIC_HUB_LOG=PATH`` keeps a copy of the hub's log (with its services'
output) at PATH. The first run builds a virtualenv for the test accounts under /opt (about a minute
and a half); later runs reuse it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

_HERE = Path(__file__).resolve().parent
for _path in (str(_HERE), str(_HERE.parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import _hub  # noqa: E402
import _venv  # noqa: E402

STEWARD = "dpmagic"
PROBE = "dpmagic-probe"
DATASET = "visits"
# Budgets are zCDP (delta > 0): a dataset-wide epsilon of 1.3 holds about 1.6 per-user budgets of 1,
# so two analysts can reach it.
EPSILON, PER_USER_EPSILON = 1.3, 1.0
WARDS = ["cardiology", "oncology", "orthopaedics", "internal", "icu"]
DIAGNOSES = ["hypertension", "type 2 diabetes", "copd", "asthma", "heart failure"]
CANARY_AGE = "97.123456"

POLICY = f"""\
default_purpose = "explore"

[columns.patient_id]
tier = "identifier"

[columns.age]
tier = "standard"
bounds = [0, 110]

[columns.ward]
tier = "standard"
categories = {WARDS!r}

[columns.diagnosis]
tier = "standard"
categories = {DIAGNOSES!r}

[columns.length_of_stay]
tier = "standard"
bounds = [0, 60]
"""


def pytest_configure(config):
    config.addinivalue_line("markers", "hub: runs a real JupyterHub with OS accounts (root only)")


def _missing(reason: str):
    if os.environ.get(_hub.REQUIRE_ENV) == "1":
        pytest.fail(f"{_hub.REQUIRE_ENV}=1, but {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class World:
    """Everything one run set up: the accounts, the hub, the steward's files, the tokens."""

    root: Path
    hub: _hub.Hub
    accounts: dict
    venv: Path
    pythonpath: Path
    canary: str
    data: Path
    policy: Path
    registry: Path
    ledger: str
    postgres_log: Path
    steward: bool  # whether the steward service runs (False: the checkout has none yet)
    dataset: str = DATASET
    epsilon: float = EPSILON
    per_user_epsilon: float = PER_USER_EPSILON
    canary_age: str = CANARY_AGE
    probe: str = PROBE
    tokens: dict = field(default_factory=dict)
    kernels: dict = field(default_factory=dict)
    registration: str = ""

    def name(self, who: str) -> str:
        return self.accounts[who].name

    def kernel(self, who: str) -> _hub.Kernel:
        if who not in self.kernels:
            self.kernels[who] = self.hub.kernel(self.name(who), self.tokens[who])
        return self.kernels[who]

    def environment(self) -> dict:
        return {"PYTHONPATH": str(self.pythonpath)}

    def service_pids(self, marker: str) -> list[int]:
        uid = self.accounts["steward"].uid
        return [pid for pid in _hub.processes_of([uid]) if any(marker in part for part in _hub.cmdline(pid))]


def write_visits(path: Path, canary: str) -> None:
    """About 300 synthetic patients, up to three visits each, and one planted canary visit."""
    rng = np.random.default_rng()
    visits = rng.integers(1, 4, 300)
    ids = np.repeat(np.arange(1000, 1300), visits)
    frame = pd.DataFrame({
        "patient_id": ids,
        "age": rng.integers(18, 90, len(ids)).astype(float),
        "ward": rng.choice(WARDS, len(ids)),
        "diagnosis": rng.choice(DIAGNOSES, len(ids)),
        "length_of_stay": rng.integers(0, 30, len(ids)),
    })
    planted = pd.DataFrame({"patient_id": [4242], "age": [float(CANARY_AGE)], "ward": ["icu"],
                            "diagnosis": [canary], "length_of_stay": [7]})
    frame = pd.concat([frame, planted], ignore_index=True).sample(frac=1.0, random_state=1)
    frame.to_csv(path, index=False, float_format="%.6f")
    assert CANARY_AGE in path.read_text() and canary in path.read_text()


def steward_available(world_env: dict, steward: _hub.Account, venv: Path) -> bool:
    found = _hub.run_as(steward, [str(venv / "bin" / "python"), "-m", "jupyter_dpmagic.steward", "--help"],
                        env=world_env, check=False, timeout=120)
    return found.returncode == 0 and "serve" in found.stdout + found.stderr


@pytest.fixture(scope="module")
def world():
    reason = _hub.unavailable()
    if reason is not None:
        _missing(reason)
    try:
        proxy = _venv.proxy_command()
        venv = _venv.shared_venv()
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _missing(f"the hub's proxy or the users' virtualenv could not be installed: {error}")

    import _postgres

    _hub.remove_stale_users()
    with contextlib.ExitStack() as cleanup:
        root = Path(tempfile.mkdtemp(prefix="dpmagic-hub-"))
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        os.chmod(root, 0o711)
        homes = root / "home"
        homes.mkdir(mode=0o711)
        os.chmod(homes, 0o711)
        pythonpath = _hub.share_package(root / "pkg")
        suffix = secrets.token_hex(2)
        accounts = {}
        for who in ("steward", "alice", "bob", "carol"):
            name = f"dpm_{who}_{suffix}"
            cleanup.callback(_hub.delete_user, name)
            accounts[who] = _hub.create_user(name, homes)
        steward = accounts["steward"]
        environment = {"PYTHONPATH": str(pythonpath)}

        cluster = _postgres.start_cluster()
        cleanup.callback(cluster.stop)
        ledger = _hub.private_database(cluster, steward, "stewarddb")

        canary = f"CANARY-{secrets.token_hex(8)}"
        data, policy, registry = steward.home / "visits.csv", steward.home / "policy.toml", steward.home / "registry.json"
        write_visits(data, canary)
        policy.write_text(POLICY)
        for path in (data, policy):
            os.chown(path, steward.uid, steward.gid)
            os.chmod(path, 0o600)

        has_steward = steward_available(environment, steward, venv)
        registration = ""
        python = str(venv / "bin" / "python")
        if has_steward:
            registration = _hub.run_as(steward, [
                python, "-m", "jupyter_dpmagic.steward", "register", "--registry", str(registry),
                "--ledger", ledger, "--name", DATASET, "--file", str(data), "--epsilon", str(EPSILON),
                "--per-user-epsilon", str(PER_USER_EPSILON), "--delta", "1e-6", "--policy", str(policy),
                "--privacy-unit", "patient_id", "--max-rows-per-unit", "3"], env=environment).stdout
        elif os.environ.get(_hub.REQUIRE_ENV) == "1":
            pytest.fail(f"{_hub.REQUIRE_ENV}=1, but `python -m jupyter_dpmagic.steward --help` does not offer "
                        "`serve` in this checkout", pytrace=False)

        probe = root / "probe.py"
        probe.write_text(_hub.PROBE)
        os.chmod(probe, 0o644)
        services = [_hub.Service(PROBE, [python, str(probe)], steward, environment)]
        if has_steward:
            services.append(_hub.Service(STEWARD, [
                python, "-m", "jupyter_dpmagic.steward", "serve", "--registry", str(registry), "--ledger", ledger],
                steward, environment))
        hub_dir = root / "hub"
        hub_dir.mkdir(mode=0o700)
        hub = _hub.Hub(hub_dir, venv=venv, pythonpath=pythonpath, proxy=proxy, python=_hub.hub_python(venv),
                       users=[accounts[w] for w in ("alice", "bob", "carol")],
                       granted=[accounts["alice"].name, accounts["bob"].name], services=services,
                       steward_service=STEWARD)
        keep = os.environ.get("DPMAGIC_HUB_LOG")
        if keep:
            cleanup.callback(lambda: hub.log.exists() and shutil.copyfile(hub.log, keep))
        cleanup.callback(hub.stop)
        started = time.monotonic()
        hub.start()
        world = World(root=root, hub=hub, accounts=accounts, venv=venv, pythonpath=pythonpath, canary=canary,
                      data=data, policy=policy, registry=registry, ledger=ledger,
                      postgres_log=cluster.root / "server.log", steward=has_steward, registration=registration)
        for who in ("alice", "bob", "carol"):
            world.tokens[who] = hub.token(accounts[who].name)
        hub.spawn(accounts["alice"].name, accounts["bob"].name)
        hub.wait_for_service(PROBE)
        if has_steward:
            hub.wait_for_service(STEWARD, "api/datasets", token=world.tokens["alice"])
        hub.timings["ready"] = time.monotonic() - started

        def close_kernels():
            for kernel in world.kernels.values():
                kernel.close()

        cleanup.callback(close_kernels)
        yield world


@pytest.fixture
def needs_steward(world):
    if not world.steward:
        _missing("the steward service (python -m jupyter_dpmagic.steward serve) is not in this checkout")
    return world
