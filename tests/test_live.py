"""The kernel side of the live budget, through a real ipykernel: what is pushed, when, and the state reply."""

from __future__ import annotations

import json
import uuid

import pytest

import jupyter_dpmagic as dp
from jupyter_dpmagic.live import PROTOCOL, SIDEBAR_TARGET, STATE_TARGET

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

CANARY_NUMBER = 987654.321
CANARY_TEXT = "CANARY-ward-7f3a"

SETUP = f"""
import jupyter_dpmagic as dp, numpy as np, pandas as pd
rng = np.random.default_rng(0)
frame = pd.DataFrame({{"age": rng.integers(0, 100, 400).astype(float), "ward": ["a", "b"] * 200}})
frame.loc[0, "age"] = {CANARY_NUMBER}
frame.loc[1, "ward"] = "{CANARY_TEXT}"
visits = dp.protect(frame, name="visits", epsilon=1.0, bounds={{"age": (0, 100)}})
"""


class Kernel:
    """A real kernel and a client that sees every iopub message of each request."""

    def __init__(self, ledger):
        self.manager = jupyter_client.KernelManager(kernel_name="python3")
        self.manager.start_kernel(env={**__import__("os").environ, "DPMAGIC_LEDGER": str(ledger)})
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def run(self, code: str) -> tuple[dict, list[dict]]:
        messages = []
        reply = self.client.execute_interactive(code, output_hook=messages.append, timeout=60)
        return reply, messages

    def ask_state(self, names=()) -> list[dict]:
        """Open a comm to the state target as the sidebar does; the messages it caused, until idle."""
        comm_id = uuid.uuid4().hex
        request = self.client.session.msg("comm_open", {
            "comm_id": comm_id, "target_name": STATE_TARGET,
            "data": {"request": "state", "datasets": list(names)}})
        self.client.shell_channel.send(request)
        messages = []
        while True:
            message = self.client.get_iopub_msg(timeout=30)
            if message["parent_header"].get("msg_id") != request["header"]["msg_id"]:
                continue
            messages.append(message)
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                return [m for m in messages if m["content"].get("comm_id") == comm_id]

    def restart(self) -> None:
        self.manager.restart_kernel(now=True)
        self.client.wait_for_ready(timeout=60)

    def stop(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    running = Kernel(tmp_path_factory.mktemp("live") / "ledger.sqlite")
    yield running
    running.stop()


def pushes(messages) -> list[dict]:
    """Payloads the kernel pushed to the sidebar's target, checking each comm is closed at once."""
    opened = [m for m in messages if m["msg_type"] == "comm_open" and m["content"]["target_name"] == SIDEBAR_TARGET]
    closed = {m["content"]["comm_id"] for m in messages if m["msg_type"] == "comm_close"}
    assert all(m["content"]["comm_id"] in closed for m in opened), "every update comm must be closed at once"
    return [m["content"]["data"] for m in opened]


def card(payload: dict, name: str) -> dict:
    (found,) = [d for d in payload["datasets"] if d["name"] == name]
    return found


def test_live_budget_in_a_real_kernel(kernel):
    # Before %load_ext the kernel has no state target: it closes the sidebar's comm without a word.
    reply = kernel.ask_state()
    assert [m["msg_type"] for m in reply] == ["comm_close"]

    _, messages = kernel.run("%load_ext jupyter_dpmagic")
    (loaded,) = pushes(messages)
    assert loaded["reason"] == "loaded" and loaded["protocol"] == PROTOCOL and loaded["datasets"] == []

    # No sidebar has asked yet: nothing is pushed (a frontend without the extension hears nothing).
    _, messages = kernel.run(SETUP + "\nwith dp.spending(epsilon=0.1):\n    visits['age'].mean()")
    assert pushes(messages) == []

    reply = kernel.ask_state(["visits", "nobody-has-this-name"])
    assert [m["msg_type"] for m in reply] == ["comm_msg", "comm_close"]
    state = reply[0]["content"]["data"]
    assert state["reason"] == "state" and [d["name"] for d in state["datasets"]] == ["visits"]
    visits = card(state, "visits")
    assert visits["protected"] is True and visits["mode"] == "pure"
    assert visits["epsilon_spent"] == pytest.approx(0.1) and visits["epsilon_total"] == 1.0
    assert visits["releases"] == 1 and len(visits["recent"]) == 1
    assert visits["recent"][0]["accuracy"] and "mean" in visits["recent"][0]["query"]

    # A cell with two releases: one push, after the cell, with both (newest first).
    _, messages = kernel.run("%%dp --epsilon 0.2\nvisits['age'].mean()\nvisits['age'].sum()")
    (update,) = pushes(messages)
    visits = card(update, "visits")
    assert update["reason"] == "release"
    assert visits["epsilon_spent"] == pytest.approx(0.5) and visits["releases"] == 3
    ids = [r["id"] for r in visits["recent"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 3
    assert all(r["accuracy"] for r in visits["recent"])
    assert [t["name"] for t in visits["tiers"]] and [p["name"] for p in visits["purposes"]]

    # Cells that charge nothing (no release, or a refused one) push nothing.
    assert pushes(kernel.run("x = 1 + 1")[1]) == []
    reply, messages = kernel.run("%%dp --epsilon 5\nvisits['age'].mean()")
    assert reply["content"]["status"] == "error" and pushes(messages) == []

    # The payload never carries a value of the data.
    everything = json.dumps([state, update])
    assert CANARY_TEXT not in everything and "987654" not in everything


def test_protecting_data_is_pushed(kernel):
    kernel.run("%load_ext jupyter_dpmagic")
    kernel.ask_state()
    _, messages = kernel.run("labs = dp.protect(frame.assign(age=frame['age'] / 2), name='labs', epsilon=2.0, "
                             "bounds={'age': (0, 100)})")
    (update,) = pushes(messages)
    labs = card(update, "labs")
    assert labs["epsilon_spent"] == 0 and labs["epsilon_total"] == 2.0 and labs["recent"] == []


def test_a_long_cell_pushes_while_it_runs(kernel):
    kernel.run("%load_ext jupyter_dpmagic")
    kernel.ask_state()
    code = ("%%dp --epsilon 0.01\nimport time\nfor _ in range(3):\n    visits['age'].count()\n"
            "    time.sleep(0.6)")
    _, messages = kernel.run(code)
    updates = pushes(messages)
    # A short cell pushes once, at its end; this one also pushes while it runs (at most every half
    # second), and the last push has everything.
    assert len(updates) >= 2
    releases = [card(u, "visits")["releases"] for u in updates]
    assert releases == sorted(releases) and releases[0] < releases[-1]
    final = card(kernel.ask_state()[0]["content"]["data"], "visits")
    assert releases[-1] == final["releases"]


def test_after_a_restart_the_ledger_budget_comes_back(kernel):
    kernel.run("%load_ext jupyter_dpmagic")
    before = card(kernel.ask_state()[0]["content"]["data"], "visits")
    kernel.restart()
    assert [m["msg_type"] for m in kernel.ask_state(["visits"])] == ["comm_close"]
    kernel.run("%load_ext jupyter_dpmagic")
    after = card(kernel.ask_state(["visits"])[0]["content"]["data"], "visits")
    assert after["protected"] is False
    assert after["epsilon_spent"] == pytest.approx(before["epsilon_spent"]) and after["releases"] == before["releases"]
    # Accuracy is known only for releases this kernel made.
    assert all(r["accuracy"] is None for r in after["recent"])


def test_the_widget_meter_follows_later_cells(kernel):
    kernel.run("%load_ext jupyter_dpmagic\n" + SETUP)
    kernel.run("other = dp.protect(frame.assign(age=frame['age'] + 1), name='another', epsilon=1.0)")
    _, messages = kernel.run("meter = dp.budget_widget('visits')\nmeter")
    shown = [m for m in messages if m["msg_type"] == "execute_result"]
    assert "application/vnd.jupyter.widget-view+json" in shown[0]["content"]["data"]
    text = shown[0]["content"]["data"]["text/plain"]
    assert "'visits'" in text and "another" not in text  # only the dataset asked for
    _, messages = kernel.run("print(meter.children[0].children[0].value)")
    before = float("".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream"))
    _, messages = kernel.run("%%dp --epsilon 0.05\nvisits['age'].count()")
    # The bar's new value reaches the frontend as a widget state update.
    updates = [m["content"]["data"]["state"]["value"] for m in messages
               if m["msg_type"] == "comm_msg"
               and isinstance(m["content"]["data"].get("state", {}).get("value"), float)]
    assert updates and updates[-1] == pytest.approx(before + 5.0, abs=1e-6)


def test_without_a_kernel_the_budget_is_a_text_table(ledger_path, hospital, dataset_name):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()  # terminal-like: no kernel, so no widget can be drawn
    assert shell.run_cell("%load_ext jupyter_dpmagic").success
    dp.protect(hospital, name=dataset_name, epsilon=1.0, bounds={"age": (0, 110)})
    assert isinstance(dp.budget_widget(dataset_name), dp.BudgetStatus)
    assert dataset_name in repr(dp.budget_widget())
    assert dataset_name in repr(shell.run_cell("%dp budget").result)


@pytest.mark.parametrize("releases, expected", [(7, "ok"), (8, "warning"), (9, "warning"), (10, "exhausted")])
def test_levels_at_the_edges(hospital, dataset_name, releases, expected):
    from jupyter_dpmagic.live import level

    private = dp.protect(hospital, name=dataset_name, epsilon=1.0, bounds={"age": (0, 110)})
    with dp.spending(epsilon=0.1):
        for _ in range(releases):
            private["age"].count()
    # Eight releases of 0.1 add up to 0.7999999999999999 in floats: still 80%, as the sidebar says.
    assert level(dp.budget(dataset_name)) == expected
