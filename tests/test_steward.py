"""Isolated mode in one process: a real registry, ledger, steward and HTTP server; the kernel's side
through dp.remote. Who a token belongs to comes from a table (tests/hub/ runs the real JupyterHub)."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest

import jupyter_dpmagic as dp
from jupyter_dpmagic import wire
import jupyter_dpmagic.steward_client as remote_module
from jupyter_dpmagic.session import get_session
from jupyter_dpmagic.steward import Analyst, Registry, Steward
from jupyter_dpmagic.steward.cli import main as steward_cli

from _postgres import unavailable as postgres_unavailable
from _steward import Served, TokenTable

CANARY_TEXT = "CANARY-" + secrets.token_hex(6)
CANARY_AGE = 97.123456
POLICY = """
default_purpose = "explore"
[purposes.explore]
epsilon = 0.1
[columns.patient_id]
tier = "identifier"
[columns.age]
tier = "quasi-identifier"
bounds = [0, 110]
[columns.ward]
categories = ["cardio", "onco", "ortho"]
[columns.stay]
bounds = [0, 60]
"""


def _table(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({
        "patient_id": np.arange(n),
        "age": rng.integers(18, 95, n).astype(float),
        "ward": rng.choice(["cardio", "onco", "ortho"], n),
        "diagnosis": rng.choice(["asthma", "copd"], n),
        "stay": rng.integers(1, 30, n),
    })
    frame.loc[n - 1, ["age", "diagnosis"]] = [CANARY_AGE, CANARY_TEXT]
    return frame


@pytest.fixture
def registered(tmp_path):
    """A registry with 'visits' (each analyst ε=1, all together ε=1.5, δ=1e-6) and 'closed' (bob only)."""
    data, policy = tmp_path / "visits.csv", tmp_path / "policy.toml"
    _table().to_csv(data, index=False)
    policy.write_text(POLICY)
    registry, ledger = tmp_path / "registry.json", str(tmp_path / "steward.sqlite")
    common = ["--registry", str(registry), "--ledger", ledger, "--file", str(data), "--policy", str(policy),
              "--delta", "1e-6", "--privacy-unit", "patient_id"]
    assert steward_cli(["register", "--name", "visits", "--epsilon", "1.5", "--per-user-epsilon", "1", *common]) == 0
    assert steward_cli(["register", "--name", "closed", "--epsilon", "1", "--per-user-epsilon", "1",
                        "--allow", "bob", *common]) == 0
    return registry, ledger


TOKENS = {"alice-token": Analyst("alice"), "bob-token": Analyst("bob"), "carol-token": Analyst("carol")}


@contextlib.contextmanager
def serving(registry, ledger, steward_class=Steward):
    """A steward served until the block ends; then the kernel forgets it and its datasets."""
    server = Served(steward_class(Registry.load(registry), ledger=ledger), TokenTable(TOKENS))
    try:
        yield server
    finally:
        server.stop()
        for name in [n for n, d in get_session().datasets.items() if d.remote is not None]:
            del get_session().datasets[name]
        remote_module._connection = None


@pytest.fixture
def served(registered, caplog):
    caplog.set_level(logging.DEBUG)
    with serving(*registered) as server:
        yield server
    text = caplog.text
    assert CANARY_TEXT not in text and str(CANARY_AGE) not in text


def _as(served, token):
    dp.connect(served.url, token=token, timeout=10)
    return dp.remote("visits")


def _raw(served, method, path, body=None, token="alice-token"):
    """A request by hand, as anyone could send it; returns (status, decoded JSON body)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"token {token}"
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(served.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
    text = raw.decode()
    assert CANARY_TEXT not in text and str(CANARY_AGE) not in text
    return status, json.loads(text)


def _spent(served, user):
    return served.steward.session.accountant.ledger.budget(name="visits", user=user).spent_units


def test_remote_releases_are_charged_to_the_stewards_ledger_only(served, ledger_path):
    visits = _as(served, "alice-token")
    assert list(visits.columns) == ["patient_id", "age", "ward", "diagnosis", "stay"]
    with dp.spending(epsilon=0.2):
        n = len(visits)
        mean_age = visits["age"].mean()
        by_ward = visits.groupby("ward")["stay"].mean()
    assert isinstance(n, int) and abs(n - 300) < 150
    assert 0 <= mean_age <= 110 and dp.info(mean_age).epsilon == pytest.approx(0.2)
    assert list(by_ward.index) == ["cardio", "onco", "ortho"]
    history = dp.history("visits")
    assert [c.query for c in history.charges] == ["count(rows)", "mean(age)", "mean(stay) by ward"]
    assert dp.history("visits", verify=True).ok
    status = dp.budget("visits")
    assert status.user == "alice" and status.releases == 3
    # The kernel's own ledger holds nothing: the steward's is the only record.
    assert get_session().accountant.ledger.budgets(user="alice") == []
    assert _spent(served, "alice") > 0


def test_the_body_cannot_choose_whose_budget_pays(served):
    _as(served, "alice-token")
    body = {"request_id": secrets.token_hex(16), "user": "bob",
            "measures": {"kind": "tuple", "items": [{"kind": "Count", "expr": None}]},
            "scope": {"epsilon": 0.1}}
    status, answer = _raw(served, "POST", "api/datasets/visits/release", body)
    assert status == 200 and answer["kind"] == "Released"
    assert _spent(served, "alice") > 0
    with pytest.raises(Exception):
        served.steward.session.accountant.ledger.budget(name="visits", user="bob")


@pytest.mark.parametrize("token, status", [(None, 401), ("forged", 403)])
def test_requests_without_a_known_token_are_refused(served, token, status):
    for method, path in [("GET", "api/datasets"), ("GET", "api/datasets/visits/budget"),
                         ("POST", "api/datasets/visits/release")]:
        code, answer = _raw(served, method, path, {} if method == "POST" else None, token=token)
        assert code == status and "token" in answer["error"]


def test_a_dataset_not_allowed_looks_like_one_that_does_not_exist(served):
    _as(served, "alice-token")
    assert [d["name"] for d in dp.datasets().datasets] == ["visits"]
    with pytest.raises(dp.PolicyError, match="no dataset named 'closed' is available to you"):
        dp.remote("closed")
    with pytest.raises(dp.PolicyError, match="no dataset named 'nothing' is available to you"):
        dp.remote("nothing")
    dp.connect(served.url, token="bob-token")
    assert [d["name"] for d in dp.datasets().datasets] == ["closed", "visits"]


def test_exhausted_budgets_and_the_dataset_wide_cap(served):
    alice = _as(served, "alice-token")
    with dp.spending(epsilon=0.5):
        alice["age"].mean()
        alice["age"].mean()
        before = _spent(served, "alice")
        with pytest.raises(dp.BudgetExceededError, match="nothing was charged"):
            alice["age"].mean()
    assert _spent(served, "alice") == before
    # zCDP: everyone's rho together stays within the rho of (1.5, delta); bob and carol each spend
    # less than their own budget of 1 before the dataset refuses them.
    spent_by = {}
    for user in ("bob", "carol"):
        frame = _as(served, f"{user}-token")
        with dp.spending(epsilon=0.25):
            for _ in range(4):
                try:
                    frame["stay"].mean()
                except dp.BudgetExceededError as refused:
                    assert "dataset-wide" in str(refused)
                    break
        spent_by[user] = dp.budget("visits").epsilon_share_spent
    cap = served.steward.session.accountant.ledger.dataset_cap(name="visits")
    assert cap.spent_units <= cap.cap_units
    assert spent_by["carol"] < 1.0, "the dataset-wide cap must stop carol before her own budget"
    assert cap.cap_units - cap.spent_units < _spent(served, "alice") / 2  # not even one more 0.25 share fits


def test_the_dataset_wide_cap_adds_epsilons_of_pure_budgets(served, registered, tmp_path):
    registry, ledger = registered
    data = tmp_path / "visits.csv"
    assert steward_cli(["register", "--registry", str(registry), "--ledger", ledger, "--name", "pure", "--file",
                        str(data), "--policy", str(tmp_path / "policy.toml"), "--epsilon", "1.5",
                        "--per-user-epsilon", "1"]) == 0
    with serving(registry, ledger) as server:
        for user, expect_refusal in (("alice", False), ("bob", True)):
            dp.connect(server.url, token=f"{user}-token")
            pure = dp.remote("pure")
            with dp.spending(epsilon=0.5):
                pure["age"].mean()
                if expect_refusal:  # 0.5 + 0.5 by alice and 0.5 by bob: the dataset's 1.5 is spent
                    with pytest.raises(dp.BudgetExceededError, match="dataset-wide budget of 'pure'"):
                        pure["age"].mean()
                else:
                    pure["age"].mean()
        status = server.steward.session.accountant.dataset_status("pure")
        assert status.epsilon_spent == pytest.approx(1.5) and status.releases == 3


def test_refusals_charge_nothing_and_say_what_to_do(served):
    visits = _as(served, "alice-token")
    with dp.spending(epsilon=0.1):
        with pytest.raises(dp.PolicyError, match="identifier"):
            visits["patient_id"].mean()
        with pytest.raises(dp.PolicyError, match="no dataset named 'nowhere'"):
            dp.remote("nowhere")
        with pytest.raises(dp.PolicyError, match="epsilon"):
            visits["age"].mean(epsilon=-1)
    # Outside a %%dp cell the kernel refuses before asking the steward.
    with pytest.raises(dp.PrivacyError, match="%%dp"):
        visits["age"].mean()
    assert served.steward.session.accountant.ledger.budget(name="visits", user="alice").releases == 0


_COUNT = {"kind": "tuple", "items": [{"kind": "Count", "expr": None}]}


_COUNT = {"kind": "tuple", "items": [{"kind": "Count", "expr": None}]}
_NAN = {"kind": "float", "repr": "nan"}


@pytest.mark.parametrize("body, with_id", [
    (b"not json", False),
    ({"measures": _COUNT}, False),
    ({"request_id": "x" * 32, "measures": _COUNT}, False),
    ({"measures": {"kind": "tuple", "items": [{"kind": "Pickle", "data": "x"}]}}, True),
    ({"measures": {"kind": "tuple", "items": [{"kind": "Sum", "low": 0, "high": 1, "expr": {
        "kind": "BinOp", "op": "__import__", "left": {"kind": "Col", "name": "age"},
        "right": {"kind": "Lit", "value": 1}}}]}}, True),
    ({"measures": {"kind": "tuple", "items": [{"kind": "Count", "expr": {"kind": "Lit", "value": [1]}}]}}, True),
    ({"measures": _COUNT, "where": {"kind": "tuple", "items": [
        {"kind": "Part", "token": 1, "fraction": 0.5, "side": True, "unit": "diagnosis"}]}}, True),
    ({"measures": _COUNT, "scope": {"epsilon": 0.1, "caps": [{"budget": 0.1, "spent_units": -5}]}}, True),
    ({"measures": _COUNT, "scope": {"epsilon": _NAN}}, True),
    ({"measures": _COUNT, "scope": {"epsilon": 0.1, "accuracy": [0, False]}}, True),
])
def test_hand_written_plans_are_refused_before_anything_runs(served, body, with_id):
    _as(served, "alice-token")
    if with_id:
        body = {**body, "request_id": secrets.token_hex(16)}
    status, answer = _raw(served, "POST", "api/datasets/visits/release", body)
    assert status == 400 and answer["error"]
    assert served.steward.session.accountant.ledger.budget(name="visits", user="alice").releases == 0


def test_a_request_id_is_answered_once(served):
    _as(served, "alice-token")
    body = {"request_id": secrets.token_hex(16), "measures": {"kind": "tuple", "items": [{"kind": "Count"}]},
            "scope": {"epsilon": 0.1}}
    assert _raw(served, "POST", "api/datasets/visits/release", body)[0] == 200
    status, answer = _raw(served, "POST", "api/datasets/visits/release", body)
    assert status == 409 and "sent already" in answer["error"]
    assert served.steward.session.accountant.ledger.budget(name="visits", user="alice").releases == 1
    # Only its sender can look it up.
    assert wire.decode(_raw(served, "GET", f"api/requests/{body['request_id']}")[1])["state"] == "done"
    assert wire.decode(_raw(served, "GET", f"api/requests/{body['request_id']}",
                            token="bob-token")[1])["state"] == "unknown"


class _SlowSteward(Steward):
    """Answers only after the charge is committed and the client has given up waiting."""

    delay = 1.5

    def release(self, *args, **kwargs):
        released = super().release(*args, **kwargs)
        time.sleep(self.delay)
        return released


def test_a_lost_answer_is_fetched_not_charged_twice(registered):
    with serving(*registered, _SlowSteward) as server:
        dp.connect(server.url, token="alice-token", timeout=0.5)
        visits = dp.remote("visits")
        with dp.spending(epsilon=0.1):
            mean_age = visits["age"].mean()
        assert dp.info(mean_age).charge_id == 1
        record = server.steward.session.accountant.ledger.budget(name="visits", user="alice")
        assert record.releases == 1
        assert len(dp.history("visits").charges) == 1


def test_a_steward_that_goes_away_after_charging_is_reported_as_maybe_charged(registered):
    with serving(*registered, _SlowSteward) as server:
        dp.connect(server.url, token="alice-token", timeout=0.5)
        visits = dp.remote("visits")
        original = remote_module.StewardClient.get

        def unreachable(self, path, **params):
            if path.startswith("api/requests/"):
                raise dp.StewardError("cannot reach the steward", charged=False)
            return original(self, path, **params)

        remote_module.StewardClient.get = unreachable
        try:
            with dp.spending(epsilon=0.1), pytest.raises(dp.StewardError, match="not sent again") as caught:
                visits["age"].mean()
        finally:
            remote_module.StewardClient.get = original
        assert caught.value.charged is None
        time.sleep(_SlowSteward.delay)
        assert server.steward.session.accountant.ledger.budget(name="visits", user="alice").releases == 1


def test_an_unreachable_steward_is_a_clear_error(registered):
    dp.connect("http://127.0.0.1:9/services/dpmagic/", token="alice-token", timeout=2)
    try:
        with pytest.raises(dp.StewardError, match="cannot reach the steward") as caught:
            dp.remote("visits")
        assert caught.value.charged is False
    finally:
        remote_module._connection = None


def test_code_that_runs_on_rows_is_refused_remotely(served):
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB

    visits = _as(served, "alice-token")
    with dp.spending(epsilon=0.5):
        with pytest.raises(dp.PolicyError, match="runs only query plans"):
            dp.fit_private(LogisticRegression(), visits[["age", "stay"]], visits["ward"])
        model = dp.fit_private(GaussianNB(), visits[["age", "stay"]], visits["ward"])
    assert hasattr(model, "predict")


def test_the_magics_and_the_live_budget_read_the_steward(served, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    from jupyter_dpmagic import live

    monkeypatch.setenv("DPMAGIC_STEWARD_TOKEN", "alice-token")
    shell = InteractiveShell.instance()
    assert shell.run_cell("%load_ext jupyter_dpmagic").success
    result = shell.run_cell(f"%dp connect {served.url} --timeout 10")
    assert result.success and "visits" in repr(result.result)
    assert shell.run_cell("import jupyter_dpmagic as dp\nvisits = dp.remote('visits')").success
    result = shell.run_cell("%%dp --epsilon 0.1 --budget 0.15\nvisits['age'].mean()")
    assert result.success and dp.info(result.result).epsilon == pytest.approx(0.1)
    result = shell.run_cell("%%dp --epsilon 0.1 --budget 0.15\na = visits['age'].mean()\nb = visits['stay'].mean()")
    assert not result.success and isinstance(result.error_in_exec, dp.BudgetExceededError)
    payload = live.payload(get_session(), reason="test")
    (entry,) = [d for d in payload["datasets"] if d["name"] == "visits"]
    # The second cell's first release fitted its --budget of 0.15, the second did not (nor was it charged).
    assert entry["user"] == "alice" and [r["query"] for r in entry["recent"]] == ["mean(age)", "mean(age)"]
    assert entry["recent"][1]["accuracy"]
    assert shell.run_cell("%dp history visits").success


def test_registration_refuses_what_it_cannot_serve(tmp_path, registered, capsys):
    registry, ledger = registered
    data = tmp_path / "visits.csv"
    args = ["register", "--registry", str(registry), "--ledger", ledger, "--file", str(data), "--epsilon", "1"]
    assert steward_cli([*args, "--name", "visits", "--per-user-epsilon", "1"]) == 1
    assert "registered already" in capsys.readouterr().err
    assert steward_cli([*args, "--name", "more", "--per-user-epsilon", "2"]) == 2
    assert steward_cli([*args, "--name", "bad", "--per-user-epsilon", "1", "--privacy-unit", "nobody"]) == 1
    assert "nobody" in capsys.readouterr().err
    assert set(Registry.load(registry).entries) == {"visits", "closed"}
    # Data changed after registration is not served: its budget was set for other data.
    frame = pd.read_csv(data)
    frame.loc[0, "age"] = 50.5
    frame.to_csv(data, index=False)
    steward = Steward(Registry.load(registry), ledger=ledger)
    with pytest.raises(dp.PolicyError, match="changed after it was registered"):
        steward.dataset("visits", Analyst("alice"))


def test_parquet_files_are_served(tmp_path):
    pytest.importorskip("pyarrow")
    data = tmp_path / "visits.parquet"
    _table().to_parquet(data)
    registry, ledger = tmp_path / "r.json", str(tmp_path / "l.sqlite")
    assert steward_cli(["register", "--registry", str(registry), "--ledger", ledger, "--name", "visits",
                        "--file", str(data), "--epsilon", "1", "--per-user-epsilon", "1", "--delta", "1e-6"]) == 0
    steward = Steward(Registry.load(registry), ledger=ledger)
    assert steward.describe("visits", Analyst("alice"))["columns"]["ward"] in ("str", "object", "string")


@pytest.mark.skipif(postgres_unavailable() is not None, reason=str(postgres_unavailable()))
def test_the_steward_on_a_postgresql_ledger(tmp_path, postgres_cluster):
    postgres_database = postgres_cluster.new_database()
    data, policy = tmp_path / "visits.csv", tmp_path / "policy.toml"
    _table().to_csv(data, index=False)
    policy.write_text(POLICY)
    registry = tmp_path / "registry.json"
    assert steward_cli(["register", "--registry", str(registry), "--ledger", postgres_database, "--name", "visits",
                        "--file", str(data), "--policy", str(policy), "--epsilon", "1.5", "--per-user-epsilon", "1",
                        "--delta", "1e-6"]) == 0
    with serving(registry, postgres_database) as server:
        visits = _as(server, "alice-token")
        with dp.spending(epsilon=0.2):
            assert 0 <= visits["age"].mean() <= 110
        assert dp.history("visits", verify=True).ok


def test_what_analysts_see_cannot_confirm_a_guess_of_the_data(served, registered, tmp_path):
    """The ledger's hashes cover the data's key; a bare hash of the table would let someone who
    guessed every row check the guess, so the steward's key is salted and never sent."""
    from jupyter_dpmagic.engine.local import fingerprint

    bare = fingerprint(pd.read_csv(tmp_path / "visits.csv"))
    visits = _as(served, "alice-token")
    with dp.spending(epsilon=0.1):
        len(visits)
    assert get_session().datasets["visits"].record.fingerprint != bare
    for path in ("api/datasets", "api/datasets/visits", "api/datasets/visits/history",
                 "api/datasets/visits/history?verify=1", "api/datasets/visits/budget", "api/budgets"):
        status, answer = _raw(served, "GET", path)
        assert status == 200 and bare not in json.dumps(answer)


def test_the_hubs_environment_connects_by_itself(served, monkeypatch):
    monkeypatch.setenv("DPMAGIC_STEWARD_URL", served.url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "bob-token")
    remote_module._connection = None
    visits = dp.remote("visits")
    with dp.spending(epsilon=0.1):
        len(visits)
    assert dp.budget("visits").user == "bob" and dp.budget("visits").releases == 1


def test_failures_on_the_data_say_nothing_about_it(served):
    visits = _as(served, "alice-token")
    attempts = [
        lambda: visits[visits["diagnosis"] > 5]["age"].mean(),
        lambda: visits[visits["diagnosis"] == CANARY_TEXT]["age"].mean(),
        lambda: visits["diagnosis"].mean(),
        lambda: visits.groupby("diagnosis")["age"].mean(),
        lambda: visits["age"].quantile(0.999),
    ]
    with dp.spending(epsilon=0.05):
        for attempt in attempts:
            try:
                text = repr(attempt())
            except dp.PrivacyError as error:
                text = str(error)
            assert CANARY_TEXT not in text and str(CANARY_AGE) not in text
