"""The magics, through a real IPython InteractiveShell."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell

import jupyter_dpmagic as dp


@pytest.fixture
def shell(ledger_path, hospital):
    sh = InteractiveShell.instance()
    sh.user_ns["hospital"] = hospital
    result = sh.run_cell("%load_ext jupyter_dpmagic")
    assert result.success
    yield sh
    sh.user_ns.pop("df", None)


def run(sh, code):
    result = sh.run_cell(code)
    return result


def protect_cell(name, epsilon=5):
    return (f"df = hospital.copy()\n%dp protect df --name {name} --epsilon {epsilon} --bounds age=0:110 "
            "--bounds bmi=10:60 --categories ward=cardio,onco,ortho,icu")


def test_protect_replaces_the_variable_and_cells_release(shell, dataset_name):
    assert run(shell, protect_cell(dataset_name)).success
    assert isinstance(shell.user_ns["df"], dp.PrivateFrame)
    result = run(shell, "%%dp --epsilon 0.5\nm = df.age.mean()\nm")
    assert result.success, result.error_in_exec
    assert isinstance(result.result, float) and 18 <= result.result <= 95
    assert dp.info(result.result).epsilon == pytest.approx(0.5)
    result = run(shell, "%%dp --epsilon 0.25\ndf.groupby('ward').size()")
    assert result.success and list(result.result.index) == ["cardio", "onco", "ortho", "icu"]
    assert dp.budget(dataset_name).epsilon_spent == pytest.approx(0.75)


def test_outside_dp_cells_nothing_is_released(shell, dataset_name):
    run(shell, protect_cell(dataset_name))
    result = run(shell, "df.age.mean()")
    assert not result.success and isinstance(result.error_in_exec, dp.PrivacyError)
    assert "%%dp" in str(result.error_in_exec)
    shown = run(shell, "df")  # the schema, never rows
    assert shown.success and "rows are hidden" in repr(shown.result)
    assert dp.budget(dataset_name).releases == 0


def test_errors_fail_the_cell_render_short_and_charge_nothing(shell, dataset_name, capsys):
    run(shell, protect_cell(dataset_name, epsilon=1))
    capsys.readouterr()
    result = run(shell, "%%dp --epsilon 0.1\nx = df.age.mean()\ndf.head()")
    assert not result.success and isinstance(result.error_in_exec, dp.PrivacyError)
    out = capsys.readouterr().out
    assert "PrivacyError" in out and "head()" in out and "Traceback" not in out and "frame.py" not in out
    assert dp.budget(dataset_name).releases == 1  # the mean before the refusal was released and charged
    result = run(shell, "%%dp --epsilon 5\ndf.age.mean()")
    assert isinstance(result.error_in_exec, dp.BudgetExceededError)
    assert dp.budget(dataset_name).epsilon_spent == pytest.approx(0.1)


def test_cell_options(shell, dataset_name):
    run(shell, protect_cell(dataset_name))
    result = run(shell, "%%dp --budget 0.3\na = df.age.mean(epsilon=0.2)\nb = df.age.mean(epsilon=0.2)")
    assert isinstance(result.error_in_exec, dp.BudgetExceededError) and "--budget" in str(result.error_in_exec)
    result = run(shell, "%%dp --purpose publish\ndf.stay_days.mean(bounds=(0, 60))")
    assert result.success and dp.info(result.result).epsilon == pytest.approx(0.5)
    assert dp.info(result.result).purpose == "publish"
    result = run(shell, "%%dp --purpose publsh\ndf.age.mean()")
    assert isinstance(result.error_in_exec, dp.PolicyError) and "publish" in str(result.error_in_exec)
    result = run(shell, "%%dp --delta 1e-6\ndf.age.mean()")
    assert isinstance(result.error_in_exec, dp.PolicyError) and "delta" in str(result.error_in_exec)
    result = run(shell, "%%dp --epsilon -1\ndf.age.mean()")
    assert isinstance(result.error_in_exec, dp.PolicyError)
    result = run(shell, "%%dp --epsilonn 1\ndf.age.mean()")
    assert isinstance(result.error_in_exec, dp.PolicyError) and "usage" in str(result.error_in_exec).lower()
    assert dp.budget(dataset_name).epsilon_spent == pytest.approx(0.2 + 0.5)


def test_line_subcommands_render_text_and_html(shell, dataset_name):
    run(shell, protect_cell(dataset_name))
    run(shell, "%%dp --epsilon 0.5\nlen(df)")
    for command, expected in (("budget", "0.5"), ("history", "count(rows)"), ("policy", "quasi-identifier")):
        result = run(shell, f"%dp {command} {dataset_name}")
        assert result.success, result.error_in_exec
        assert expected in repr(result.result) and expected in result.result._repr_html_()
    assert dataset_name in repr(run(shell, "%dp budget").result)
    assert "0.5" in repr(run(shell, "%%dp\n%dp budget " + dataset_name).result)  # line magics work in cells
    result = run(shell, "%dp polcy")
    assert isinstance(result.error_in_exec, dp.PolicyError) and "policy" in str(result.error_in_exec)


def test_ledger_location_from_config(shell, tmp_path, monkeypatch, hospital):
    monkeypatch.delenv("DPMAGIC_LEDGER")
    target = tmp_path / "configured" / "ledger.sqlite"
    assert run(shell, f"%config DPMagics.ledger = {str(target)!r}").success
    try:
        assert run(shell, protect_cell("configured")).success
        assert target.exists()
    finally:
        run(shell, "%config DPMagics.ledger = ''")


def test_the_environment_variable_wins_over_config(shell, tmp_path, ledger_path):
    other = tmp_path / "other.sqlite"
    run(shell, f"%config DPMagics.ledger = {str(other)!r}")
    try:
        assert run(shell, protect_cell("env_wins")).success
        assert ledger_path.exists() and not other.exists()
    finally:
        run(shell, "%config DPMagics.ledger = ''")


def test_protect_with_unit_and_policy_file(shell, tmp_path):
    policy = tmp_path / "hospital.toml"
    policy.write_text('[columns.stay_days]\ntier = "sensitive"\nbounds = [0, 60]\n')
    shell.user_ns["visits"] = shell.user_ns["hospital"].assign(pid=lambda d: d.patient_id // 4)
    result = run(shell, f"%dp protect visits --name unit_policy --epsilon 5 --policy {policy} --unit pid --max-rows 2")
    assert result.success, result.error_in_exec
    result = run(shell, "%%dp --epsilon 0.5\nvisits.stay_days.mean()")
    assert result.success, result.error_in_exec
    info = dp.info(result.result)
    assert info.tier == "sensitive" and "2 row(s) per 'pid'" in " ".join(info.notes)
    assert "identifier (privacy unit)" in repr(shell.user_ns["visits"])


def test_grouped_releases_render_intervals(shell, dataset_name):
    run(shell, protect_cell(dataset_name))
    series = run(shell, "%%dp --epsilon 0.5\ndf.groupby('ward').age.mean()").result
    frame = run(shell, "%%dp --epsilon 0.5\ndf.groupby('ward')[['age', 'bmi']].mean()").result
    for release in (series, frame):
        html = release._repr_html_()
        assert "ε=0.5" in html and "discrete Laplace" in html and "cardio" in html
    assert "95% CI low" in series._repr_html_() and "[" in frame._repr_html_()
    assert "-- DP release" in repr(series)
    assert type(series * 2) is not type(series)  # derived values are plain pandas objects
