"""Isolated mode through a real JupyterHub: analysts as OS accounts, a steward that alone holds the data.

The tests run in file order and share one hub (see conftest.py): the budgets that the later tests
exhaust were partly spent by the earlier ones, and each test reads the budgets it relies on from the
steward instead of assuming what was spent before.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

import _hub

pytestmark = pytest.mark.hub

SETUP = 'import json, os\n%load_ext jupyter_dpmagic\nimport jupyter_dpmagic as dp\nvisits = dp.remote("visits")'
TOLERANCE = 1e-9


def ok(output: _hub.Output, kernel: _hub.Kernel) -> _hub.Output:
    assert output.error is None, f"{kernel.user}: {output.error}\n{kernel.stderr[-3000:]}"
    return output


def opened(kernel: _hub.Kernel) -> None:
    """The kernel has the library loaded and the remote dataset open as ``visits``."""
    if not kernel.value("'visits' in globals()"):
        ok(kernel.run(SETUP), kernel)


def spent(world, who: str) -> float:
    """What ``who`` spent of their budget, in the epsilon the releases asked for (a share of its rho)."""
    kernel = world.kernel(who)
    opened(kernel)
    return kernel.value('dp.budget("visits").epsilon_share_spent')


def release(world, who: str, epsilon: float, code: str = "x = len(visits)") -> _hub.Output:
    return world.kernel(who).run(f"%%dp --epsilon {epsilon}\n{code}")


def steward_request(world, method: str, path: str, *, token=None, body=None) -> _hub.Response:
    return _hub.http(method, world.hub.steward_url + path, body=body, token=token, transcript=world.hub.transcript)


def refused(response: _hub.Response) -> str:
    assert response.status in (401, 403), (response.status, response.body[:500])
    error = response.json().get("error")
    assert isinstance(error, str) and error, response.body[:500]
    return error


# -------------------------------------------------------------------------------- the harness


def test_each_server_and_kernel_runs_as_its_own_account(world):
    for who in ("alice", "bob"):
        account = world.accounts[who]
        kernel = world.kernel(who)
        ok(kernel.run("import os, pwd"), kernel)
        uid, name, home = kernel.value("[os.getuid(), pwd.getpwuid(os.getuid()).pw_name, os.path.expanduser('~')]")
        assert (uid, name, home) == (account.uid, account.name, str(account.home))
        servers = [pid for pid in _hub.processes_of([account.uid])
                   if any("jupyterhub-singleuser" in part for part in _hub.cmdline(pid))]
        assert servers, f"no jupyterhub-singleuser process runs as {account.name}"
    assert not _hub.processes_of([world.accounts["carol"].uid]), "carol's server was never started"


def test_a_kernel_returns_stdout_results_and_errors(world):
    kernel = world.kernel("alice")
    assert kernel.run("print('hello'); 6 * 7") == ("hello\n", "42", None)
    stdout, result, error = kernel.run("1 / 0")
    assert (stdout, result) == ("", None) and error.startswith("ZeroDivisionError")


def test_the_stand_in_service_runs_as_the_steward_behind_the_proxy(world):
    answer = _hub.http("GET", f"{world.hub.url}/services/{world.probe}/who", transcript=world.hub.transcript)
    assert answer.status == 200
    found = answer.json()
    assert (found["uid"], found["user"]) == (world.accounts["steward"].uid, world.name("steward"))
    assert found["path"] == f"/services/{world.probe}/who"


def test_analysts_cannot_read_each_other_or_the_steward(world):
    bob, steward = world.accounts["bob"], world.accounts["steward"]
    bob_server = next(pid for pid in _hub.processes_of([bob.uid])
                      if any("jupyterhub-singleuser" in part for part in _hub.cmdline(pid)))
    probe = world.service_pids(str(world.root / "probe.py"))
    assert probe, "the stand-in service is not running as the steward"
    targets = {
        "bob's home": f"os.listdir({str(bob.home)!r})",
        "bob's server's environment (his hub token)": f"open('/proc/{bob_server}/environ', 'rb').read()",
        "the steward's home": f"os.listdir({str(steward.home)!r})",
        "the data file": f"open({str(world.data)!r}).read()",
        "the policy": f"open({str(world.policy)!r}).read()",
        "the registry": f"open({str(world.registry)!r}).read()",
        "a steward process's environment": f"open('/proc/{probe[0]}/environ', 'rb').read()",
    }
    outcomes = attempts(world.kernel("alice"), targets)
    for what, outcome in outcomes.items():
        assert outcome.startswith("PermissionError"), (what, outcome)


def test_analysts_cannot_connect_to_the_stewards_database(world):
    socket = world.ledger.split("host=", 1)[1]
    alice = world.name("alice")
    targets = {
        "as the steward's role": f"__import__('psycopg').connect({world.ledger!r}, connect_timeout=10)",
        "as their own role": f"__import__('psycopg').connect('postgresql://{alice}@/stewarddb?host={socket}', "
                             "connect_timeout=10)",
        "as the superuser": f"__import__('psycopg').connect('postgresql://postgres@/postgres?host={socket}', "
                            "connect_timeout=10)",
    }
    outcomes = attempts(world.kernel("alice"), targets)
    for what, outcome in outcomes.items():
        assert outcome.startswith("OperationalError"), (what, outcome)
        assert "authentication failed" in outcome or "no pg_hba.conf entry" in outcome, (what, outcome)


def attempts(kernel: _hub.Kernel, targets: dict) -> dict:
    """Evaluate each expression in the kernel; ``"allowed"`` or the exception's type and message."""
    code = ["outcomes = {}"]
    for what, expression in targets.items():
        code.append(f"try:\n    {expression}\n    outcomes[{what!r}] = 'allowed'\n"
                    f"except Exception as error:\n    outcomes[{what!r}] = f'{{type(error).__name__}}: {{error}}'")
    ok(kernel.run("\n".join(code)), kernel)
    return kernel.value("outcomes")


# -------------------------------------------------------------------------------- the steward


def test_analysts_release_through_the_hub(needs_steward):
    world = needs_steward
    for who in ("alice", "bob"):
        kernel = world.kernel(who)
        opened(kernel)
        before = spent(world, who)
        ok(release(world, who, 0.1, "n = len(visits)"), kernel)
        ok(release(world, who, 0.1, 'm = visits["age"].mean()'), kernel)
        ok(release(world, who, 0.1, 'g = visits.groupby("ward")["age"].mean()'), kernel)
        n, m = kernel.value("[int(n), float(m)]")
        assert 300 < n < 1100 and 0 <= m <= 110
        assert kernel.value("dp.info(m).epsilon") == pytest.approx(0.1)
        grouped = kernel.run("print(g)")
        assert any(ward in grouped.stdout for ward in ("cardiology", "icu")), grouped
        budget = kernel.value('[dp.budget("visits").user, dp.budget("visits").epsilon_total, '
                              'dp.budget("visits").epsilon_share_spent]')
        assert budget[0] == world.name(who)
        assert budget[1] == pytest.approx(world.per_user_epsilon)
        assert budget[2] == pytest.approx(before + 0.3, abs=TOLERANCE)
        history = ok(kernel.run('print(dp.history("visits"))'), kernel).stdout
        assert world.name(who) in history and "count(rows)" in history and "mean(age)" in history


def test_the_steward_refuses_whoever_the_hub_did_not_vouch_for(needs_steward):
    world = needs_steward
    for path in ("api/datasets", f"api/datasets/{world.dataset}", f"api/datasets/{world.dataset}/budget"):
        refused(steward_request(world, "GET", path))
        refused(steward_request(world, "GET", path, token="not-a-token"))
        # A user the hub knows, without the role that grants access to the steward.
        carol = steward_request(world, "GET", path, token=world.tokens["carol"])
        assert carol.status == 403, carol
        # A service's token (here an admin service's), not a user's.
        refused(steward_request(world, "GET", path, token=world.hub.admin_token))
    body = {"measures": {"kind": "tuple", "items": []}, "epsilon": 0.1}
    refused(steward_request(world, "POST", f"api/datasets/{world.dataset}/release", body=body))
    assert steward_request(world, "POST", f"api/datasets/{world.dataset}/release", token=world.tokens["carol"],
                           body=body).status == 403
    refused(steward_request(world, "POST", f"api/datasets/{world.dataset}/release", token=world.hub.admin_token,
                            body=body))
    listing = steward_request(world, "GET", "api/datasets", token=world.tokens["alice"])
    assert listing.status == 200 and world.dataset in listing.body.decode()


def test_the_token_decides_whose_budget_pays(needs_steward):
    """A release request naming another user is charged to the token's owner."""
    world = needs_steward
    alice = world.kernel("alice")
    opened(alice)
    # Capture the body the library sends for a count (that release is charged to alice too).
    ok(alice.run(
        "import urllib.request\n"
        "_sent, _urlopen = [], urllib.request.urlopen\n"
        "def _spy(request, *args, **kwargs):\n"
        "    if getattr(request, 'data', None) and request.full_url.endswith('/release'):\n"
        "        _sent.append(request.data.decode())\n"
        "    return _urlopen(request, *args, **kwargs)\n"
        "urllib.request.urlopen = _spy"), alice)
    try:
        ok(release(world, "alice", 0.1, "spied = len(visits)"), alice)
    finally:
        ok(alice.run("urllib.request.urlopen = _urlopen"), alice)
    sent = json.loads(alice.value("_sent[-1]"))
    alice_before, bob_before = spent(world, "alice"), spent(world, "bob")
    forged = {**sent, "user": world.name("bob"), "request_id": uuid.uuid4().hex}
    answer = steward_request(world, "POST", f"api/datasets/{world.dataset}/release", token=world.tokens["alice"],
                             body=forged)
    assert answer.status == 200, answer
    assert spent(world, "bob") == pytest.approx(bob_before, abs=TOLERANCE)
    assert spent(world, "alice") == pytest.approx(alice_before + 0.1, abs=TOLERANCE)
    mine = steward_request(world, "GET", f"api/datasets/{world.dataset}/budget", token=world.tokens["bob"])
    assert mine.status == 200 and world.name("bob") in mine.body.decode()


def test_budgets_run_out_per_user_then_for_the_dataset(needs_steward):
    """Spending is in shares of each analyst's budget; the dataset's cap holds ``cap`` such shares."""
    from jupyter_dpmagic.accountant import epsilon_delta_to_rho

    world = needs_steward
    for who in ("alice", "bob"):
        opened(world.kernel(who))
    cap = epsilon_delta_to_rho(world.epsilon, 1e-6) / epsilon_delta_to_rho(world.per_user_epsilon, 1e-6)
    step = 0.1
    # Alice spends until her own budget refuses (the dataset's cap still has room).
    for _ in range(round(world.per_user_epsilon / step) + 2):
        alice, bob = spent(world, "alice"), spent(world, "bob")
        out = release(world, "alice", step)
        if out.error:
            break
    assert out.error and out.error.startswith("BudgetExceededError"), out
    assert "dataset-wide" not in out.error, out.error
    assert alice + step > world.per_user_epsilon + TOLERANCE
    assert alice + bob + step < cap - 0.1, "alice was refused near the dataset's cap, not by her own budget"
    assert spent(world, "alice") == pytest.approx(alice, abs=TOLERANCE), "a refused release was charged"
    # Bob, with budget of his own left, still can spend...
    ok(release(world, "bob", step), world.kernel("bob"))
    # ...until all the analysts together reach the dataset's cap.
    for _ in range(round(world.epsilon / step) + 2):
        alice, bob = spent(world, "alice"), spent(world, "bob")
        out = release(world, "bob", step)
        if out.error:
            break
    assert out.error and out.error.startswith("BudgetExceededError"), out
    assert "dataset-wide" in out.error, out.error
    assert bob + step <= world.per_user_epsilon - step + TOLERANCE, "bob was refused by his own budget, not the cap"
    assert alice + bob <= cap + 0.01 < alice + bob + step + 0.01
    assert spent(world, "bob") == pytest.approx(bob, abs=TOLERANCE), "a refused release was charged"


def test_the_steward_process_is_out_of_the_analysts_reach(needs_steward):
    world = needs_steward
    stewards = world.service_pids("jupyter_dpmagic.steward")
    assert stewards, "no steward process runs as the steward's account"
    assert all(_hub.process_uid(pid) == world.accounts["steward"].uid for pid in stewards)
    targets = {f"/proc/{pid}/environ": f"open('/proc/{pid}/environ', 'rb').read()" for pid in stewards}
    targets["the registry"] = f"open({str(world.registry)!r}).read()"
    steward = world.accounts["steward"]
    for path in (world.registry, world.data, world.policy, steward.home):
        found = os.stat(path)
        assert (found.st_uid, found.st_mode & 0o077) == (steward.uid, 0), f"{path} is open to others"
    for what, outcome in attempts(world.kernel("alice"), targets).items():
        assert outcome.startswith("PermissionError"), (what, outcome)


# -------------------------------------------------------------------------------- last: the logs


def test_a_revoked_token_stops_working_within_seconds(needs_steward):
    world = needs_steward
    name = world.name("alice")
    made = world.hub.api("POST", f"users/{name}/tokens", {"note": "revoked", "expires_in": 3600})
    path = f"api/datasets/{world.dataset}/budget"
    assert steward_request(world, "GET", path, token=made["token"]).status == 200  # now cached by the steward
    world.hub.api("DELETE", f"users/{name}/tokens/{made['id']}")
    revoked = time.monotonic()
    while steward_request(world, "GET", path, token=made["token"]).status == 200:
        assert time.monotonic() - revoked < 15, "the steward still accepts a token revoked 15 s ago"
        time.sleep(0.5)
    # The steward caches the hub's answer for 5 s (jupyter_dpmagic.steward.auth.CACHE_SECONDS).
    assert time.monotonic() - revoked < 5 + 3


def test_the_canary_never_leaves_the_steward(world):
    """Neither the planted value nor the planted diagnosis shows in any answer, kernel output or log."""
    assert _hub.http("GET", f"{world.hub.url}/services/{world.probe}/who").status == 200
    if world.steward:
        # Everything the steward tells an analyst about the dataset, read directly.
        for path in ("api/datasets", "api/budgets", f"api/datasets/{world.dataset}",
                     f"api/datasets/{world.dataset}/budget", f"api/datasets/{world.dataset}/history"):
            answer = steward_request(world, "GET", path, token=world.tokens["alice"])
            assert answer.status == 200, (path, answer)
    world.hub.stop()  # the log is complete once the hub and its services have stopped
    log = world.hub.log.read_text(errors="replace")
    # The services' own output (not the hub's or the proxy's lines about them) is in the log.
    own = [line for line in log.splitlines() if "JupyterHub" not in line and "ConfigProxy" not in line]
    assert any(f"/services/{world.probe}/who" in line for line in own), "the stand-in's output is not in the log"
    if world.steward:
        assert any("/services/dpmagic/api/" in line for line in own), "the steward's output is not in the log"
    texts = {"the hub's log (with the services')": log,
             "the PostgreSQL server's log": world.postgres_log.read_text(errors="replace")
             if world.postgres_log.exists() else ""}
    for secret in (world.canary, world.canary_age):
        assert not world.hub.transcript.containing(secret), secret
        for what, text in texts.items():
            assert secret not in text, f"{secret} is in {what}"
    assert world.hub.transcript.parts, "nothing was recorded"
    print("\nhub timings (s):", {k: round(v, 2) for k, v in world.hub.timings.items()})
