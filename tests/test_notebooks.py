"""Run every notebook in ``examples/`` top to bottom in a real kernel and check what it shows.

Each notebook is executed with nbclient, twice in a row against the same temporary ledger (a user
re-running it must not be stopped by the budget it persisted the first time). Errors are allowed
only in cells tagged ``raises-exception``, and those must be this package's own refusals.

The kernel: notebooks run in the ``python3`` kernelspec, which must resolve to the environment that
runs the tests. jupyter_client starts a kernelspec whose command is a bare ``python`` as
``sys.executable``, so the spec installed by ipykernel in this environment (``--sys-prefix``) is
exactly this interpreter; the ``kernel_name`` fixture checks that before anything runs, and a probe
cell appended to each executed copy checks which interpreter and which ``jupyter_dpmagic`` the kernel
really imported. If the check fails, install the spec for this environment with
``python -m ipykernel install --sys-prefix``.

The ledger: every run gets ``DPMAGIC_LEDGER`` pointing at a file in a temporary directory, so the
examples never charge the user's real ledger; a test checks that the real one was left alone.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

import jupyter_dpmagic
from jupyter_dpmagic.session import LEDGER_ENV, ledger_location

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
KERNEL_NAME = "python3"
TIME_LIMIT = 60.0  # seconds per run, kernel start and shutdown included
CELL_TIMEOUT = 120
REFUSALS = {"PrivacyError", "PolicyError", "BudgetExceededError"}
ALLOW_ERRORS_TAG = "raises-exception"
_PROBE = "import sys, jupyter_dpmagic\nprint(sys.prefix)\nprint(jupyter_dpmagic.__file__)"
_BARE_PYTHON = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}


# ---------------------------------------------------------------------------------- reading outputs
@dataclass
class Run:
    nb: nbformat.NotebookNode
    seconds: float
    probe: str  # stdout of the probe cell


@dataclass
class Executed:
    path: Path
    runs: list
    ledger: Path
    real_ledger_before: tuple
    real_ledger_after: tuple


def _cell(nb, cell_id: str):
    for cell in nb.cells:
        if cell.get("id") == cell_id:
            return cell
    raise AssertionError(f"no cell with id '{cell_id}'; the checks below look cells up by id")


def _text(cell) -> str:
    """Everything a code cell printed or returned, as plain text."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
    return "\n".join(parts)


def _html(cell) -> str:
    return "\n".join(out.data.get("text/html", "") for out in cell.get("outputs", [])
                     if out.output_type in ("execute_result", "display_data"))


def _errors(cell) -> list:
    return [out for out in cell.get("outputs", []) if out.output_type == "error"]


def _tags(cell) -> list:
    return list(cell.get("metadata", {}).get("tags", []))


def _file_state(path: Path) -> tuple:
    """What a run could change about a ledger file and its SQLite side files."""
    state = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(path) + suffix)
        state.append((p.name, p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else (p.name, None, None))
    return tuple(state)


def _run(path: Path, kernel_name: str, workdir: Path, ledger: Path) -> Run:
    nb = nbformat.read(path, as_version=4)
    probe = nbformat.v4.new_code_cell(_PROBE)
    nb.cells.append(probe)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(workdir)}})
    env = {**os.environ, LEDGER_ENV: str(ledger)}
    start = time.perf_counter()
    client.execute(env=env)
    seconds = time.perf_counter() - start
    nb.cells.remove(probe)
    return Run(nb=nb, seconds=seconds, probe=_text(probe))


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def kernel_name() -> str:
    """``python3``, after checking that it starts this environment's interpreter."""
    install = f"{sys.executable} -m ipykernel install --sys-prefix"
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        pytest.fail(f"no '{KERNEL_NAME}' kernelspec; install one for this environment: {install}")
    command = spec.argv[0]
    if command not in _BARE_PYTHON:  # a bare name is started as sys.executable by jupyter_client
        found = subprocess.run([command, "-c", "import sys; print(sys.prefix)"], capture_output=True,
                               text=True, timeout=60)
        if found.stdout.strip() != sys.prefix:
            pytest.fail(f"kernelspec '{KERNEL_NAME}' in {spec.resource_dir} starts {command} "
                        f"(prefix {found.stdout.strip() or '?'}), not this environment ({sys.prefix}); "
                        f"run: {install}")
    return KERNEL_NAME


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def executed(request, kernel_name, tmp_path_factory) -> Executed:
    """The notebook run twice in fresh kernels against one temporary ledger."""
    path = request.param
    workdir = tmp_path_factory.mktemp(path.stem)
    ledger = workdir / "ledger.sqlite"
    for policy in EXAMPLES.glob("*.toml"):  # the notebooks read their policy files from their own folder
        shutil.copy(policy, workdir / policy.name)
    real = Path(ledger_location())
    before = _file_state(real)
    runs = [_run(path, kernel_name, workdir, ledger) for _ in range(2)]
    return Executed(path=path, runs=runs, ledger=ledger, real_ledger_before=before,
                    real_ledger_after=_file_state(real))


# ------------------------------------------------------------------------------------ every notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL_NAME
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {cell.get('id')} has committed outputs; clear them"
            assert cell.execution_count is None, f"cell {cell.get('id')} has an execution count; clear it"


def test_runs_in_this_environment(executed):
    prefix, package = executed.runs[0].probe.split()
    assert prefix == sys.prefix
    assert Path(package).resolve() == Path(jupyter_dpmagic.__file__).resolve()


def test_finishes_in_time(executed):
    for n, run in enumerate(executed.runs, 1):
        print(f"{executed.path.name} run {n}: {run.seconds:.1f} s")
        assert run.seconds < TIME_LIMIT, f"run {n} took {run.seconds:.1f} s (limit {TIME_LIMIT:g} s)"


def test_every_cell_ran_and_only_tagged_cells_failed(executed):
    for n, run in enumerate(executed.runs, 1):
        for cell in run.nb.cells:
            if cell.cell_type != "code":
                continue
            where = f"run {n}, cell {cell.get('id')}"
            assert cell.execution_count is not None, f"{where} did not run"
            errors = _errors(cell)
            if ALLOW_ERRORS_TAG in _tags(cell):
                # A stale tag would hide a refusal that no longer happens.
                assert errors, f"{where} is tagged {ALLOW_ERRORS_TAG} but raised nothing"
                assert {e.ename for e in errors} <= REFUSALS, \
                    f"{where} failed with {[e.ename for e in errors]}, not a refusal of this package"
            else:
                assert not errors, f"{where} failed: {[(e.ename, e.evalue) for e in errors]}"


def test_uses_a_temporary_ledger(executed):
    assert executed.ledger.exists(), "the notebook did not write to the ledger named by DPMAGIC_LEDGER"
    assert executed.real_ledger_after == executed.real_ledger_before, "the user's real ledger was touched"


def test_notebook_outputs(executed):
    check = OUTPUT_CHECKS.get(executed.path.name)
    if check is None:
        pytest.skip(f"no output checks written for {executed.path.name} yet")
    check(executed)


# ------------------------------------------------------------------------------------ per notebook
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _epsilon(text: str) -> float:
    found = re.search(rf"ε=({_NUMBER})", text)
    assert found, f"no 'ε=' in {text!r}"
    return float(found.group(1))


def _budget(text: str) -> tuple[float, float, int]:
    """(spent, total, releases) from the text of ``%dp budget NAME``."""
    row = re.search(rf"^\s*epsilon\s+({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})\s*$", text, re.MULTILINE)
    count = re.search(r"(\d+) releases?\b", text)
    assert row and count, f"unexpected budget output:\n{text}"
    return float(row.group(1)), float(row.group(2)), int(count.group(1))


def _history(text: str) -> list[float]:
    """The ε column of ``%dp history``."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("#"))
    start = lines[header].index("ε")
    costs = []
    for line in lines[header + 2:]:
        if not re.match(r"^\d+\s+\d{4}-\d\d-\d\d ", line):  # "#  time (UTC)  ..." rows end here
            break
        costs.append(float(re.match(_NUMBER, line[start:]).group(0)))
    footer = re.search(r"(\d+) release\(s\)", text)
    assert footer and int(footer.group(1)) == len(costs), f"unexpected history output:\n{text}"
    return costs


def check_quickstart(executed: Executed) -> None:
    first, second = (run.nb for run in executed.runs)

    frame = _text(_cell(first, "protect"))
    assert "rows are hidden" in frame
    assert re.search(r"^patient_id\s+numeric\s+identifier", frame, re.MULTILINE)
    assert re.search(r"budget: ε 0 of 20 spent", frame), frame
    assert "Policy of 'diabetes-quickstart'" in _text(_cell(first, "policy"))

    mean = _text(_cell(first, "mean-bmi"))
    assert "95% CI" in mean and "ε=" in mean, mean
    value = float(re.match(_NUMBER, mean.strip()).group(0))
    low, high = (float(x) for x in re.search(rf"95% CI \[({_NUMBER}), ({_NUMBER})\]", mean).groups())
    assert 15 <= low <= high <= 50 and 15 <= value <= 50, mean  # inside the declared bounds
    assert math.isclose(_epsilon(mean), 0.5 * 0.25), mean  # publish x sensitive, as the text says

    info = _text(_cell(first, "info"))
    assert "release of mean(bmi)" in info and "cost:" in info and "95% CI" in info, info

    count = _text(_cell(first, "count"))
    assert "±" in count and math.isclose(_epsilon(count), 0.1), count

    groups = _cell(first, "group-mean")
    text = _text(groups)
    assert re.search(r"^F\s", text, re.MULTILINE) and re.search(r"^M\s", text, re.MULTILINE), text
    assert math.isclose(_epsilon(text), 0.5 * 0.5), text
    assert "95% CI low" in _html(groups) and "95% CI high" in _html(groups)

    spent, total, releases = _budget(_text(_cell(first, "budget")))
    assert 0 < spent <= total == 20
    costs = _history(_text(_cell(first, "history")))
    assert "History of 'diabetes-quickstart'" in _text(_cell(first, "history"))
    assert len(costs) == releases == 3
    assert math.isclose(spent, sum(costs), rel_tol=1e-3), (spent, costs)

    refusal = _cell(first, "refusal")
    assert ALLOW_ERRORS_TAG in _tags(refusal)
    [error] = _errors(refusal)
    assert error.ename in ("PrivacyError", "PolicyError") and "head()" in error.evalue, error.evalue

    median = _text(_cell(first, "median"))
    assert "rank within" in median and math.isclose(_epsilon(median), 0.5 * 0.5), median

    # The second run continued the budget of the first, and spent what the text says a run spends.
    spent_again, total_again, _ = _budget(_text(_cell(second, "budget")))
    assert total_again == total and spent_again > spent
    claimed = re.search(rf"spends ε = ({_NUMBER})", _cell(first, "defaults").source)
    assert claimed, "the 'defaults' cell no longer states what one run spends"
    assert math.isclose(spent_again - spent, float(claimed.group(1)), rel_tol=1e-3), \
        f"one run spends ε={spent_again - spent:.4g}, the notebook says {claimed.group(1)}"
    runs = int(total / float(claimed.group(1)))
    assert f"run about {runs} times" in _cell(first, "defaults").source, \
        f"the 'defaults' cell should say the notebook can run about {runs} times"


def _purpose_rows(text: str) -> dict[str, tuple[float, float]]:
    """``{purpose: (spent, remaining)}`` from the text of a budget table."""
    rows = re.findall(rf"^\s*purpose (\S+)(?: \([^)]*\))?\s+({_NUMBER})\s+({_NUMBER})\s*$", text, re.MULTILINE)
    return {name: (float(spent), float(left)) for name, spent, left in rows}


def check_rare_disease_cohort(executed: Executed) -> None:
    for n, run in enumerate(executed.runs, 1):
        nb = run.nb
        frame = _text(_cell(nb, "protect"))
        assert re.search(r"^patient_id\s+numeric\s+identifier \(privacy unit\)", frame, re.MULTILINE), frame
        assert "at most 3 row(s) per 'patient_id'" in frame

        described = _text(_cell(nb, "describe"))
        assert re.search(r"^count\s", described, re.MULTILINE) and re.search(r"^50%\s", described, re.MULTILINE)
        assert math.isclose(_epsilon(described), 0.5), described

        measured = re.search(r"visits: (\d+), with HbA1c: (\d+), share measured: (\d+)%",
                             _text(_cell(nb, "missing")))
        assert measured, _text(_cell(nb, "missing"))

        # The rare diagnosis (3 patients, at most 9 rows) is hidden by partition selection: its noisy count
        # must clear a threshold of about 60 with noise of standard deviation about 8, which happens with
        # probability far below 1e-9. Hypertension (about 200 patients, 300 rows) clears it as surely.
        table = _text(_cell(nb, "by-diagnosis"))
        assert "fabry" not in table.lower(), f"run {n}: the rare group was released:\n{table}"
        for common in ("hypertension", "type 2 diabetes"):
            assert re.search(rf"^{common}\s+{_NUMBER}\s*$", table, re.MULTILINE), f"run {n}: {common} missing:\n{table}"
        assert "partition selection" in table and math.isclose(_epsilon(table), 1.0), table
        info = _text(_cell(nb, "by-diagnosis-info"))
        assert "shown only if its noisy row count exceeds" in info, info

        explained = _text(_cell(nb, "explain"))
        assert "nothing was run or charged" in explained and "± " in explained, explained
        plan = re.findall(rf"ε = ({_NUMBER})\s+± (\d+) \(95%\)", _text(_cell(nb, "plan")))
        assert [float(e) for e, _ in plan] == [0.05, 0.1, 0.2, 0.5, 1.0], plan
        widths = [int(w) for _, w in plan]
        assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1], widths  # more ε, less noise
        plotted = _cell(nb, "errorbars-plot")
        assert any("image/png" in out.get("data", {}) for out in plotted.outputs), "no error-bar plot"
        released = re.findall(rf"ε = ({_NUMBER})\s+(\d+)\s+95% interval \(({_NUMBER}), ({_NUMBER})\)",
                              _text(plotted))
        assert len(released) == 5, _text(plotted)
        for (eps, value, low, high), width in zip(released, widths):
            assert float(low) <= float(value) <= float(high), released
            assert math.isclose(float(high) - float(low), 2 * width, abs_tol=2), (released, widths)  # as planned

        reference = re.search(rf"reference accuracy without DP \(public data\): ({_NUMBER})",
                              _text(_cell(nb, "cancer-load")))
        assert reference and 0.85 <= float(reference.group(1)) <= 1, _text(_cell(nb, "cancer-load"))
        model = re.search(rf"DP accuracy on the test half: ({_NUMBER}), 95% interval \(({_NUMBER}), ({_NUMBER})\)",
                          _text(_cell(nb, "dp-model")))
        assert model, _text(_cell(nb, "dp-model"))
        accuracy, low, high = (float(x) for x in model.groups())
        assert 0 <= low <= high <= 1 and 0 <= accuracy <= 1, model.groups()
        sweep = re.findall(rf"trained with ε = ({_NUMBER})\s+DP test accuracy ({_NUMBER})", _text(_cell(nb, "sweep-plot")))
        assert [float(e) for e, _ in sweep] == [0.25, 0.5, 1, 2, 4], sweep
        assert all(0 <= float(a) <= 1 for _, a in sweep), sweep

    # What one run spends is what the text says, on each dataset; the second run continued the first's budget.
    # The cohort's budget has a delta: its table shows the (ε, δ) guarantee, and the history the ε shares.
    for n, run in enumerate(executed.runs, 1):
        costs = _history(_text(_cell(run.nb, "history")))
        assert "History of 'rare-disease-cohort'" in _text(_cell(run.nb, "history"))
        assert math.isclose(sum(costs), 3.75 * n, rel_tol=1e-6) and len(costs) == 9 * n, costs
        spent, total, releases = _budget(_text(_cell(run.nb, "budget")))
        assert "'rare-disease-cohort'" in _text(_cell(run.nb, "budget")) and total == 20 and releases == 9 * n
        assert 3.75 * n <= spent < total, spent
        spent, total, _ = _budget(_text(_cell(run.nb, "budget-cancer")))
        assert "'breast-cancer'" in _text(_cell(run.nb, "budget-cancer")) and total == 50
        assert math.isclose(spent, 12.75 * n, rel_tol=1e-6), spent
    source = "\n".join(cell.source for cell in executed.runs[0].nb.cells)
    assert "spends ε = 3.75 of it" in source and "spends ε = 12.75 of it" in source


def check_workshop_differencing_attack(executed: Executed) -> None:
    for n, run in enumerate(executed.runs, 1):
        nb = run.nb
        attack = _text(_cell(nb, "attack"))
        guess = re.search(rf"attacker's guess of Mr. Smith's HbA1c: ({_NUMBER})", attack)
        truth = re.search(rf"his true value \(the instructor checks in the raw table\): ({_NUMBER})", attack)
        assert guess and truth and guess.group(1) == truth.group(1) == "9.4", attack  # exact answers leak

        # The same attack on DP answers: a guess within 0.5 of 9.4 has probability about 0.7% per try (5% would
        # already be generous), so 15 hits or more in 100 tries has probability far below 1e-6.
        dp_attack = _text(_cell(nb, "dp-attack"))
        hits = re.search(r"guesses within 0.5 of his true value: (\d+) of (\d+)", dp_attack)
        assert hits and int(hits.group(2)) == 100, dp_attack
        assert int(hits.group(1)) < 15, f"run {n}: the DP attack hit {hits.group(1)} times of 100:\n{dp_attack}"
        assert any("image/png" in out.get("data", {}) for out in _cell(nb, "dp-attack-plot").outputs)

        odds = _text(_cell(nb, "odds"))
        assert re.search(r"ε = 1\s+any conclusion about one person becomes at most\s+2\.72 times", odds), odds

        # Measure, observe, re-measure: the budget goes down by what each measurement says it costs.
        readings = [_budget(_text(_cell(nb, f"budget-{i}"))) for i in range(3)]
        spent = [r[0] for r in readings]
        assert [r[1] for r in readings] == [500] * 3
        assert [r[2] for r in readings] == [readings[0][2], readings[0][2] + 1, readings[0][2] + 2], readings
        assert math.isclose(spent[1] - spent[0], 0.5) and math.isclose(spent[2] - spent[1], 1.0), spent
        assert math.isclose(spent[0], 100 + 101.5 * (n - 1)), spent  # 100 tries of ε = 1, then 1.5 per run
        assert math.isclose(_epsilon(_text(_cell(nb, "measure-1"))), 0.5)
        assert math.isclose(_epsilon(_text(_cell(nb, "measure-2"))), 1.0)

        # The budget runs out: three answers of ε = 0.3 fit in ε = 1, the fourth is refused; on the
        # second run the budget persisted, so the first question is refused.
        runs_out = _cell(nb, "runs-out")
        assert ALLOW_ERRORS_TAG in _tags(runs_out)
        [error] = _errors(runs_out)
        assert error.ename == "BudgetExceededError" and "nothing was charged" in error.evalue, error.evalue
        assert _text(runs_out).count("average length of stay") == (3 if n == 1 else 0), _text(runs_out)
        after = _text(_cell(nb, "runs-out-after"))
        assert f"before the refusal (in this run): {3 if n == 1 else 0}" in after, after
        spent_cohort, total_cohort, releases = _budget(after)
        assert total_cohort == 1 and math.isclose(spent_cohort, 0.9) and releases == 3, after


def check_policy_for_data_owners(executed: Executed) -> None:
    import tomllib

    declared = tomllib.loads((EXAMPLES / "hospital_policy.toml").read_text())
    for n, run in enumerate(executed.runs, 1):
        nb = run.nb
        assert "[purposes.publish]" in _text(_cell(nb, "show-file"))
        assert "purposes: explore, publish, quality" in _text(_cell(nb, "load-policy"))
        [typo] = _errors(_cell(nb, "typo"))
        assert typo.ename == "PolicyError" and "Did you mean 'bounds'" in typo.evalue, typo.evalue

        # %dp policy shows the tiers, bounds and categories of the file, each with "policy" as the reason.
        table = _text(_cell(nb, "policy"))
        assert "Policy of 'hospital-visits'" in table and "ε quality" in table, table
        for column, spec in declared["columns"].items():
            row = re.search(rf"^{column}\s+(\S+)\s+policy\b(.*)$", table, re.MULTILINE)
            assert row and row.group(1) == spec["tier"], f"{column}: {row and row.group(0)}"
            if "bounds" in spec:
                low, high = spec["bounds"]
                assert f"[{low:g}, {high:g}]" in row.group(2), row.group(0)
            if "categories" in spec:
                assert ", ".join(spec["categories"]) in row.group(2), row.group(0)
        assert re.search(r"^hba1c\s.*\s0\.0125\s+0\.1\s+0\.025\s*$", table, re.MULTILINE), table  # ε × multiplier
        assert "40% of the budget reserved" in table and "max 60% of budget" in table, table

        before = _text(_cell(nb, "budget-before"))
        purposes = _purpose_rows(before)
        spent, total, _ = _budget(before)
        assert total == 6 and set(purposes) == {"explore", "publish", "quality"}, before
        # Publish pays from its reserve (2.4) first; the other purposes share the 60% outside it.
        assert purposes["publish"][0] <= 2.4
        shared = 3.6 - purposes["explore"][0] - purposes["quality"][0]
        assert math.isclose(purposes["explore"][1], shared) and math.isclose(purposes["quality"][1], shared), before
        assert math.isclose(purposes["publish"][1], 6 - spent), before
        assert "purpose publish (40% reserved)" in before and "tier sensitive (max 60%)" in before

        assert math.isclose(_epsilon(_text(_cell(nb, "explore"))), 0.05)
        [refusal] = _errors(_cell(nb, "reserve-refusal"))
        assert refusal.ename == "BudgetExceededError" and "reserved for purpose 'publish'" in refusal.evalue, \
            refusal.evalue
        published = _text(_cell(nb, "publish"))
        assert re.search(rf"^fabry disease\s+{_NUMBER}\s*$", published, re.MULTILINE), published  # declared
        assert math.isclose(_epsilon(published), 1.0), published

        after = _text(_cell(nb, "budget-after"))
        spent_after, _, _ = _budget(after)
        assert math.isclose(spent_after - spent, 1.175, rel_tol=1e-6), (spent, spent_after)
        assert math.isclose(spent, 1.175 * (n - 1), rel_tol=1e-6), spent
        costs = _history(_text(_cell(nb, "history")))
        assert math.isclose(sum(costs), spent_after, rel_tol=1e-6) and len(costs) == 4 * n, costs


OUTPUT_CHECKS = {
    "quickstart.ipynb": check_quickstart,
    "rare_disease_cohort.ipynb": check_rare_disease_cohort,
    "workshop_differencing_attack.ipynb": check_workshop_differencing_attack,
    "policy_for_data_owners.ipynb": check_policy_for_data_owners,
}
