"""Study specs: the shipped grids are exactly the paper's tables; validation and expansion."""

import pytest

from wmquant.errors import StudyError
from wmquant.study.paper import load_paper_cells
from wmquant.study.spec import (available_specs, load_spec, make_run_spec, normalise_run,
                                parse_override_strings, parse_spec)

# Rows of each table in the paper's text, FP32 baseline included (counted by hand).
PAPER_ROW_COUNTS = {1: 25, 2: 17, 3: 33, 4: 33, 5: 25, 6: 25, 7: 23, 8: 23}
TABLE_ENVS = {1: "wall", 2: "pusht", 3: "wall", 4: "wall", 5: "pusht", 6: "pusht", 7: "wall", 8: "pusht"}


def _paper_row_keys(table):
    keys = []
    for cell in load_paper_cells():
        if cell.table == table and cell.key not in keys:
            keys.append(cell.key)
    return keys


def test_every_table_is_shipped():
    assert [f"table{t}" for t in range(1, 9)] == [n for n in available_specs() if n.startswith("table")]


@pytest.mark.parametrize("table", range(1, 9))
def test_spec_grid_is_the_papers_grid_in_the_papers_order(table):
    spec = load_spec(f"table{table}")
    assert spec.paper_table == table and spec.env == TABLE_ENVS[table]
    assert len(spec.runs) == PAPER_ROW_COUNTS[table]
    assert [run.key for run in spec.runs] == _paper_row_keys(table)
    last = 50 if spec.env == "wall" else 30
    assert spec.columns == (0, 5, 10, 20, 30, 40, 50)[: 7 if last == 50 else 5]
    for run in spec.runs:
        assert run.overrides["env"] == spec.env
        assert run.overrides["planner.max_iter"] == last and run.overrides["n_evals"] == 50
        if run.overrides["method"] != "fp":
            assert run.overrides["quant"] is True and run.overrides["quant_encoder"] is True
            assert run.overrides["quant_iter"] == 2


def test_table_specific_settings():
    for table in (1, 2):  # weight-only: activations unquantized, per-tensor granularity
        for run in load_spec(f"table{table}").runs[1:]:
            assert run.overrides["encoder_abit"] == run.overrides["predictor_abit"] == 16
            assert run.overrides["calib_mode_a"] == "layer_wise"
            assert run.overrides["method"] in {"rtn", "omse", "awq", "omniquant"}
    for table in (7, 8):  # module ablation: per-channel weights, per-tensor activations
        for run in load_spec(f"table{table}").runs[1:]:
            assert run.overrides["W_GROUP_SIZE"] == -1 and run.overrides["calib_mode_a"] == "layer_wise"
            assert run.overrides["method"] in {"rtn", "smoothquant"}
    for table in (4, 6):
        assert {r.overrides["W_GROUP_SIZE"] for r in load_spec(f"table{table}").runs[1:]} == {128}
    methods = {r.overrides["method"] for r in load_spec("table3").runs}
    assert methods == {"fp", "rtn", "omse", "smoothquant", "omniquant"}
    omni = next(r for r in load_spec("table3").runs if r.overrides["method"] == "omniquant")
    assert (omni.overrides["w_quant_method"], omni.overrides["a_quant_method"]) == ("omniquant", "omniquant")


def test_fp_baseline_is_shared_and_carries_no_quantization_keys():
    wall = {load_spec(f"table{t}").runs[0].run_id for t in (1, 3, 4, 7)}
    pusht = {load_spec(f"table{t}").runs[0].run_id for t in (2, 5, 6, 8)}
    assert len(wall) == 1 and len(pusht) == 1 and wall != pusht
    fp = load_spec("table1").runs[0].overrides
    assert fp["quant"] is False and not {"encoder_wbit", "W_GROUP_SIZE", "quant_iter"} & set(fp)


def test_run_ids_are_readable_stable_and_unique():
    run = normalise_run({"env": "wall", "method": "rtn", "w_bits": 4, "a_bits": 16, "W_GROUP_SIZE": 128}, "t")
    # Pinned: changing the id scheme would orphan every existing sweep directory.
    assert make_run_spec(run).run_id == "rtn_w4a16_g128-0de585a4"
    assert make_run_spec(dict(reversed(list(run.items())))).run_id == "rtn_w4a16_g128-0de585a4"
    ids = [r.run_id for r in load_spec("table7").runs]
    assert len(set(ids)) == len(ids)
    assert "smoothquant_enc-w4a6_pred-w8a8_gpc_pt" in {i.rsplit("-", 1)[0] for i in ids}
    assert [r.run_id for r in load_spec("table3").runs] == [r.run_id for r in load_spec("table3").runs]


def test_user_overrides_apply_to_every_run():
    spec = load_spec("table3")
    runs = spec.expand({"n_evals": "10", "planner": {"max_iter": 5}})
    assert len(runs) == len(spec.runs)
    assert all(r.overrides["n_evals"] == 10 and r.overrides["planner.max_iter"] == 5 for r in runs)
    assert not {r.run_id for r in runs} & {r.run_id for r in spec.runs}


@pytest.mark.parametrize("overrides, message", [
    ({"method": "rtn"}, "cannot override method"),
    ({"w_bits": 4}, "cannot override encoder_wbit"),
    ({"n_evls": 10}, "did you mean n_evals"),
    ({"env": "pusht"}, "contradicts spec"),
    ({"n_evals": 0}, "positive integer"),
    ({"predictor_wbit": 32}, "16"),
])
def test_bad_overrides_are_refused(overrides, message):
    with pytest.raises(StudyError, match=message):
        load_spec("table1").expand(overrides)


def test_select_keeps_matching_runs_and_the_baseline():
    runs = load_spec("table1").expand(select={"method": "omse", "w_bits": [4, 3]})
    assert [r.overrides["method"] for r in runs] == ["fp"] + ["omse"] * 4
    with pytest.raises(StudyError, match="cannot select"):
        load_spec("table1").expand(select={"calib_mode": "x"})


BASE = {"name": "t", "env": "wall", "columns": [0, 5], "base": {"w_bits": 8, "a_bits": 16},
        "runs": [{"method": "fp"}, {"grid": {"method": ["rtn", "awq"]}}]}


def test_custom_spec_expands_grid_with_the_first_axis_outermost():
    spec = parse_spec({**BASE, "runs": [{"grid": {"w_bits": [8, 4], "method": ["rtn", "awq"]}}]})
    assert [(r.overrides["method"], r.overrides["encoder_wbit"]) for r in spec.runs] == [
        ("rtn", 8), ("awq", 8), ("rtn", 4), ("awq", 4)]


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, "unknown key 'colour'.*valid keys: name, paper_table"),
    ({"runs": [{"method": "bogus", "w_bits": 8}]}, "invalid value 'bogus' for method: unknown method 'bogus'; valid: fp, awq"),
    ({"base": {"encoder_wbits": 8}}, "unknown key 'encoder_wbits'.*did you mean encoder_wbit"),
    ({"runs": [{"grid": {"method": ["rtn"], "aqg": ["per_channel"]}}]}, "aqg; valid: per_tensor, per_token"),
    ({"runs": [{"grid": {"method": "rtn"}}]}, "non-empty list"),
    ({"runs": [{"method": "rtn"}, {"method": "rtn"}]}, "same run twice"),
    ({"runs": [{"method": "rtn", "quant": False}]}, "contradicts method"),
    ({"base": {}, "runs": [{"method": "rtn"}]}, "does not set predictor_wbit"),
    ({"env": "maze"}, "valid: wall, pusht"),
    ({"columns": [5, 0]}, "increasing"),
    ({"paper_table": 9}, "1-8"),
])
def test_bad_specs_are_refused_with_the_offending_value(change, message):
    with pytest.raises(StudyError, match=message):
        parse_spec({**BASE, **change})


def test_load_spec_by_name_and_path(tmp_path):
    with pytest.raises(StudyError, match="unknown study 'table9'; shipped studies: .*table1, table2"):
        load_spec("table9")
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nenv: pusht\ncolumns: [0]\nruns:\n  - method: fp\n")
    assert load_spec(path).runs[0].overrides == {"env": "pusht", "method": "fp", "quant": False}
    path.write_text("name: [unclosed\n")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_spec(path)
    with pytest.raises(StudyError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_parse_override_strings():
    assert parse_override_strings(["n_evals=10", "planner.max_iter=5", "quant_encoder=false", "tag=a=b"]) == {
        "n_evals": 10, "planner.max_iter": 5, "quant_encoder": False, "tag": "a=b"}
    with pytest.raises(StudyError, match="key=value"):
        parse_override_strings(["n_evals"])


def test_method_base_sets_keys_for_every_run_of_a_method_and_keeps_the_grid_order():
    spec = parse_spec({**BASE, "method_base": {"omniquant": {"method_options.batch_size": 8}},
                       "runs": [{"grid": {"w_bits": [8, 4], "method": ["rtn", "omniquant"]}},
                                {"method": "omniquant", "w_bits": 3, "method_options.batch_size": 2}]})
    assert [(r.overrides["method"], r.overrides["encoder_wbit"], r.overrides.get("method_options.batch_size"))
            for r in spec.runs] == [("rtn", 8, None), ("omniquant", 8, 8), ("rtn", 4, None), ("omniquant", 4, 8),
                                    ("omniquant", 3, 2)]  # a run's own keys win over method_base


@pytest.mark.parametrize("method_base, message", [
    ({"bogus": {"quant_iter": 2}}, "invalid value 'bogus' for method_base"),
    ({"rtn": {"method": "awq"}}, "cannot set 'method'"),
    ({"rtn": {"colour": 1}}, "unknown key 'colour'"),
    ([1], "must be a mapping"),
])
def test_bad_method_base_is_refused(method_base, message):
    with pytest.raises(StudyError, match=message):
        parse_spec({**BASE, "method_base": method_base})


def test_shipped_tables_train_omniquant_in_batches_of_eight():
    for table in ("table1", "table3", "table4"):
        omni = [r for r in load_spec(table).runs if r.overrides["method"] == "omniquant"]
        assert omni and all(r.overrides["method_options.batch_size"] == 8 for r in omni)
