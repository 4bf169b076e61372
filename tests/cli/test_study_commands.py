"""`wmquant sweep` and `wmquant runs list` from the command line (with the study tests' stand-in
runner, so no planning runs), and the Hydra-style argument parsing they share with `plan`."""

from __future__ import annotations

from pathlib import Path

import pytest

from wmquant.cli import main, parse_hydra_args
from wmquant.errors import ConfigError

RUNNER = f"{Path(__file__).parents[1] / 'study' / 'fake_runner.py'}:run_one"
SPEC = """\
name: cli_mini
env: wall
columns: [0, 1]
base: {n_evals: 4, planner.max_iter: 2, a_bits: 16}
runs:
  - method: fp
  - grid:
      w_bits: [8, 4]
      method: [rtn]
"""


@pytest.fixture()
def spec_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_RUNNER_SLEEP", "0")
    monkeypatch.delenv("FAKE_RUNNER_FAIL", raising=False)
    path = tmp_path / "cli_mini.yaml"
    path.write_text(SPEC)
    return path


def test_sweep_runs_every_run_then_resumes_and_runs_list_filters(tmp_path, spec_file, capsys):
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", f"study={spec_file}", f"sweep_dir={sweep_dir}", f"runner={RUNNER}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"sweep cli_mini in {sweep_dir}: 3 runs, 0 already complete, 3 ran, 0 failed" in out
    assert f"report: wmquant report {sweep_dir}" in out
    assert main(args) == 0
    assert "3 runs, 3 already complete, 0 ran, 0 failed" in capsys.readouterr().out

    assert main(["runs", "list", str(sweep_dir)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["run_id", "status", "setting", "final", "n", "seconds", "note"]
    assert len(table) == 4 and all(line.split()[1] == "done" for line in table[1:])
    assert main(["runs", "list", str(sweep_dir), "--filter", "predictor_wbit=4"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith("rtn_w4")
    assert main(["runs", "list", str(sweep_dir), "--filter", "w_bitz=4"]) == 2
    assert "unknown filter key 'w_bitz'" in capsys.readouterr().err


def test_a_sweep_with_a_failed_run_exits_1_and_names_it(tmp_path, spec_file, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_RUNNER_FAIL", "w4")
    code = main(["sweep", f"study={spec_file}", f"sweep_dir={tmp_path / 's'}", f"runner={RUNNER}"])
    out = capsys.readouterr().out
    assert code == 1 and "3 runs, 0 already complete, 2 ran, 1 failed" in out and "\n  failed " in out


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--config-name", "plan_wall.yaml", "study=table1"], "wmquant sweep takes study=NAME, not --config-name"),
    (["sweep", "model_name=wall"], "wmquant sweep needs study=NAME"),
    (["sweep", "study=table1", "hydra/launcher=pbs"], "unknown hydra/launcher 'pbs'; valid:"),
    (["runs", "list", "no/such/dir"], "no/such/dir: no such sweep directory"),
    (["plan", "--config-name"], "--config-name needs a value"),
    (["plan", "--verbose"], "unknown option '--verbose'; give --config-name NAME and key=value overrides"),
    (["frobnicate"], "unknown command 'frobnicate'; valid: plan, quant"),
])
def test_bad_command_lines_give_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, expected", [
    (["--config-name", "plan_wall.yaml", "a=1"], ("plan_wall", ["a=1"])),
    (["-cn", "plan_pusht", "a=1", "b=2"], ("plan_pusht", ["a=1", "b=2"])),
    (["--config-name=train_wall.yaml"], ("train_wall", [])),
    (["x=1"], (None, ["x=1"])),
])
def test_hydra_arguments_split_the_config_name_from_the_overrides(argv, expected):
    assert parse_hydra_args(argv) == expected


def test_a_missing_config_name_value_is_a_config_error():
    with pytest.raises(ConfigError):
        parse_hydra_args(["-cn"])


@pytest.mark.parametrize("argv, message", [
    (["data", "--env", "maze", "--out", "x", "--episodes", "2"], "unknown env 'maze'; valid envs: wall, pusht"),
    (["data", "--env", "wall", "--out", "x"], "--episodes is required"),
    (["data", "--env", "wall", "--out", "x", "--episodes", "0"], "--episodes must be a positive integer, got 0"),
    (["data", "--env", "pusht", "--out", "x", "--episodes", "2", "--steps", "-3"], "--steps must be a positive integer, got -3"),
    (["data", "--env", "wall", "--out", "x", "--episodes", "2", "--render-size", "64"],
     "--render-size, --video and --policy apply to --env pusht only"),
    (["data", "--env", "pusht", "--out", "goals.safetensors", "--goals-from", "d", "--train-episodes", "0"],
     "--train-episodes must be a positive integer, got 0"),
    (["data", "--env", "pusht", "--out", "goals.pt", "--goals-from", "d"], "must name a .safetensors goal file"),
])
def test_bad_data_command_lines_give_one_line_and_exit_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written
