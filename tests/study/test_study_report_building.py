"""How a report is built from a sweep's results (wmquant.study.report): which columns it shows,
which column a test uses, runs of different lengths, results without a sweep file or outside its
plan, what a table can detect, and replicate summaries of the last iteration."""

from __future__ import annotations

import pytest
from fake_runner import build_result

from wmquant.io import write_json
from wmquant.study.report import (
    DEFAULT_COLUMNS,
    Cell,
    Report,
    Row,
    _last_common_column,
    _outcomes,
    _report_columns,
    build_report,
    replicate_groups,
    replicate_table,
)
from wmquant.study.paper import SettingKey
from wmquant.study.spec import ENVS, load_spec
from wmquant.study.stats import holm_adjust, smallest_detectable_difference
from wmquant.study.store import ResultStore

WALL_COLUMNS = DEFAULT_COLUMNS["wall"]  # 0, 5, 10, 20, 30, 40, 50


def result_of(length: int) -> dict:
    return {"success_by_iter": [[1]] * length}


@pytest.mark.parametrize("lengths, columns", [
    ([50], [0, 5, 10, 20, 30, 40, 50]),
    ([30], [0, 5, 10, 20, 30]),
    ([25], [0, 5, 10, 20, 25]),  # a budget that ends between two columns adds its last iteration
    ([3], [0, 3]),
    ([4], [0, 4]),  # iteration 5 is not reached: column 5 is not shown
    ([19], [0, 5, 10, 19]),
    ([1], [0]),  # iteration 1 is column 0
    ([25, 50, 12], [0, 5, 10, 20, 30, 40, 50]),  # the longest run decides
    ([12, 25], [0, 5, 10, 20, 25]),
])


def test_report_columns(lengths, columns):
    assert _report_columns(WALL_COLUMNS, [result_of(n) for n in lengths]) == columns


def test_every_env_a_result_may_name_has_default_columns():
    assert set(DEFAULT_COLUMNS) == set(ENVS)


def test_outcomes_of_a_column_a_run_does_not_reach_are_none():
    result = {"success_by_iter": [[0, 1], [1, 1], [1, 0]]}
    assert _outcomes(result, 0) == [0, 1] and _outcomes(result, 1) == [0, 1]  # iterations 1 and 1
    assert _outcomes(result, 3) == [1, 0]
    assert _outcomes(result, 4) is None and _outcomes(result, 5) is None


def test_the_last_column_both_runs_reach():
    long, short = result_of(50), result_of(12)
    assert _last_common_column(WALL_COLUMNS, long, long) == 50
    assert _last_common_column(WALL_COLUMNS, long, short) == 10
    assert _last_common_column([5, 10], result_of(3), long) is None


def put(store: ResultStore, run_id: str, overrides: dict, series: list[list[int]]) -> str:
    store.run_dir(run_id).mkdir(parents=True)
    write_json(store.result_path(run_id), build_result(overrides, run_id, success_by_iter=series))
    return run_id


FP = {"method": "fp"}
RTN44 = {"method": "rtn", "encoder_wbit": 4, "encoder_abit": 4, "predictor_wbit": 4, "predictor_abit": 4}


def test_a_directory_of_results_without_a_sweep_file(tmp_path):
    """No sweep.json: rows in run-id order, the env from the results, the env's default columns
    clipped to the longest run, and a shorter run tested at the last column both reach."""
    store = ResultStore(tmp_path / "loose")
    ones, zeros = [1] * 10, [0] * 10
    put(store, "a_fp", FP, [zeros] + [ones] * 21)  # 22 iterations
    put(store, "b_rtn", RTN44, [zeros] * 4 + [ones] * 3 + [zeros] * 5)  # 12: reaches columns 0, 5, 10
    report = build_report(store.root)
    assert report.env == "wall" and report.columns == [0, 5, 10, 20, 22]
    assert [row.run_id for row in report.rows] == ["a_fp", "b_rtn"]
    fp, rtn = report.rows
    assert sorted(fp.cells) == [0, 5, 10, 20, 22] and sorted(rtn.cells) == [0, 5, 10]
    assert rtn.cells[10].successes == 0 and rtn.cells[5].successes == 10  # iterations 10 and 5
    assert rtn.cells[10].p_vs_fp is not None and rtn.cells[5].p_vs_fp is None  # the final common column only
    assert rtn.cells[10].c == 10 and rtn.cells[10].diff == -1.0


def test_all_columns_are_tested_when_asked(tmp_path):
    store = ResultStore(tmp_path / "loose")
    put(store, "a_fp", FP, [[1, 1, 1, 1]] * 6)
    put(store, "b_rtn", RTN44, [[0, 0, 0, 0]] * 6)
    report = build_report(store.root, mcnemar_scope="all")
    rtn = report.rows[1]
    assert [k for k, cell in rtn.cells.items() if cell.p_vs_fp is not None] == [0, 5, 6]
    assert report.detectable()[2] == 3  # three tests in the family


def test_a_result_outside_the_sweeps_plan_still_gets_its_row(tmp_path):
    spec = load_spec("table3")
    overrides = {"n_evals": 4, "planner.max_iter": 2}
    runs = spec.expand(overrides)
    store = ResultStore(tmp_path / "sweep")
    store.bind(spec, overrides, runs)
    store.prepare_run(runs[0])
    write_json(store.result_path(runs[0].run_id), build_result(runs[0].overrides, runs[0].run_id))
    put(store, "zz_extra", dict(RTN44, n_evals=4, **{"planner.max_iter": 2}), [[1, 0, 1, 0]] * 2)
    rows = build_report(store.root).rows
    assert [row.run_id for row in rows[:len(runs)]] == [run.run_id for run in runs]  # the plan's order
    assert rows[-1].run_id == "zz_extra" and rows[-1].status == "done" and len(rows) == len(runs) + 1


def _report(rows: list[Row]) -> Report:
    return Report(title="t", description="", env="wall", columns=[5], rows=rows, baseline=None, comparisons=[],
                  corrupt=[], paper_table=None, alpha=0.05, mcnemar_scope="final", mcnemar_method="exact",
                  unpaired=[])


def test_what_a_table_can_detect_comes_from_its_smallest_test():
    key = SettingKey("rtn", 4, 4, 4, 4, None, "per_tensor")
    untested = Row("a", key, None, "pending", cells={5: Cell(5, 10, 0.2, 0.8)})
    assert _report(rows=[untested]).detectable() == (None, None, 0, 0)
    tested = [Row(str(n), key, None, "done", cells={5: Cell(n // 2, n, 0.3, 0.7, p_vs_fp=0.5)}) for n in (50, 20, 40)]
    single, family, size, n = _report(rows=tested + [untested]).detectable()
    assert (size, n) == (3, 20)
    assert single == smallest_detectable_difference(20, 0.05)
    assert family == smallest_detectable_difference(20, 0.05, 3)


def test_replicates_are_summarised_by_their_last_iteration(tmp_path):
    store = ResultStore(tmp_path / "replicates")
    put(store, "fp_a", dict(FP, model_name="wall"), [[1] * 10] * 3)
    put(store, "fp_b", dict(FP, model_name="wall_seed1"), [[1] * 10] * 3)
    for model, final in (("wall", 4), ("wall_seed1", 7)):
        # the first two iterations differ from the last: only the last counts
        series = [[1] * 10, [0] * 10, [1] * final + [0] * (10 - final)]
        put(store, f"rtn_{model}", dict(RTN44, model_name=model), series)
    report = build_report(store.root)
    groups = {group.label: group for group in replicate_groups(report)}
    assert list(groups) == ["FP32", "RTN W4A4 per-channel per-tensor"]  # FP without bits, a method with them
    assert groups["RTN W4A4 per-channel per-tensor"].finals() == [0.4, 0.7]
    assert groups["FP32"].finals() == [1.0, 1.0]
    _, body = replicate_table(report)
    line = next(row for row in body if row[0].startswith("RTN"))
    assert line[2] == "wall cal0 0.40; wall_seed1 cal0 0.70" and line[3] == "0.55" and line[5] == "0.40-0.70"


def test_integer_runs_of_different_group_sizes_are_not_compared(tmp_path):
    """Same bits and format, different group sizes: two factors (method and grouping) differ, or
    only the grouping, which is not a question of the study's tables; the same group size is."""
    store = ResultStore(tmp_path / "groups")
    series = [[1, 0, 1, 0, 1, 0, 1, 0]] * 2
    put(store, "fp", FP, series)
    put(store, "rtn_g32", dict(RTN44, W_GROUP_SIZE=32), series)
    put(store, "omse_g32", dict(RTN44, method="omse", W_GROUP_SIZE=32), series)
    put(store, "omse_g128", dict(RTN44, method="omse", W_GROUP_SIZE=128), series)
    pairs = {(c.run_a, c.run_b) for c in build_report(store.root).comparisons}
    assert pairs == {("omse_g32", "rtn_g32")}


def test_a_run_without_an_fp_run_of_its_model_is_listed_as_untested(tmp_path):
    store = ResultStore(tmp_path / "models")
    series = [[1, 1, 0, 0]] * 2
    put(store, "fp", dict(FP, model_name="wall"), series)
    put(store, "rtn", dict(RTN44, model_name="wall"), series)
    put(store, "rtn_other", dict(RTN44, model_name="wall_seed2"), series)  # its model has no FP run here
    report = build_report(store.root)
    assert report.unpaired == ["rtn_other"]
    rows = {row.run_id: row for row in report.rows}
    assert rows["rtn"].cells[2].p_vs_fp == 1.0 and rows["rtn_other"].cells[2].p_vs_fp is None


def test_runs_compared_across_groupings_share_their_activation_granularity(tmp_path):
    """INT4 G32 against MXFP4 (whose blocks stand in for the group size) is a question only at the
    same activation granularity; per-tensor against per-token is another setting."""
    store = ResultStore(tmp_path / "formats")
    series = [[1, 0, 1, 1, 0, 1]] * 2
    put(store, "fp", FP, series)
    put(store, "int_g32", dict(RTN44, W_GROUP_SIZE=32), series)
    mx = dict(RTN44, w_format="mxfp4", a_format="mxfp4")
    put(store, "mx_tensor", mx, series)
    put(store, "mx_token", dict(mx, calib_mode_a="token_wise"), series)
    pairs = {(c.run_a, c.run_b) for c in build_report(store.root).comparisons}
    assert pairs == {("int_g32", "mx_tensor")}


def test_comparisons_carry_both_rates_and_holm_within_their_family(tmp_path):
    store = ResultStore(tmp_path / "methods")
    ones, zeros = [1] * 12, [0] * 12
    put(store, "fp", FP, [ones] * 2)
    put(store, "a_rtn", RTN44, [ones, [1] * 9 + [0] * 3])
    put(store, "b_omse", dict(RTN44, method="omse"), [ones, zeros])
    put(store, "c_awq", dict(RTN44, method="awq"), [ones, [1] * 6 + [0] * 6])
    comparisons = build_report(store.root).comparisons
    assert len(comparisons) == 3
    by_pair = {(c.run_a, c.run_b): c for c in comparisons}
    rtn_omse = by_pair[("a_rtn", "b_omse")]
    assert (rtn_omse.rate_a, rtn_omse.rate_b, rtn_omse.b, rtn_omse.c, rtn_omse.column) == (0.75, 0.0, 9, 0, 2)
    rtn_awq = by_pair[("a_rtn", "c_awq")]
    assert (rtn_awq.rate_a, rtn_awq.rate_b, rtn_awq.b, rtn_awq.c) == (0.75, 0.5, 3, 0)
    raw = [c.p_value for c in comparisons]
    assert sorted(c.p_holm for c in comparisons) == pytest.approx(sorted(holm_adjust(raw)))
    assert all(c.p_holm >= c.p_value for c in comparisons) and any(c.p_holm > c.p_value for c in comparisons)
