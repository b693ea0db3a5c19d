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


OUTPUT_CHECKS = {"quickstart.ipynb": check_quickstart}
