"""The results store: binding to one spec, atomic results, corrupt files, listing."""

import json
import re

import pytest
from fake_runner import build_result

from wmquant.errors import StudyError
from wmquant.io import atomic_path, write_json
from wmquant.study.spec import load_spec
from wmquant.study.store import ResultStore, final_success, format_runs, validate_result


@pytest.fixture()
def table2_store(tmp_path):
    spec = load_spec("table2")
    runs = spec.expand({"n_evals": 4, "planner.max_iter": 6})
    store = ResultStore(tmp_path / "sweep")
    store.bind(spec, {"n_evals": 4, "planner.max_iter": 6}, runs)
    for run in runs:
        store.prepare_run(run)
    return store, runs


def _write(store, run):
    write_json(store.result_path(run.run_id), build_result(run.overrides, run.run_id))


def test_completed_counts_only_whole_valid_results(table2_store):
    store, runs = table2_store
    _write(store, runs[0])
    _write(store, runs[1])
    # A writer killed mid-write leaves only its temporary file.
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(store.result_path(runs[2].run_id)) as tmp:
            tmp.write_text('{"schema": "wmquant.result/1", "run_')
            raise KeyboardInterrupt
    leftover = store.run_dir(runs[3].run_id) / ".tmp-result.json.abc123"
    leftover.write_text('{"half": ')
    assert not store.result_path(runs[2].run_id).exists()
    assert store.completed() == {runs[0].run_id, runs[1].run_id}
    valid, corrupt = store.load_results()
    assert [r["run_id"] for r in valid] == sorted([runs[0].run_id, runs[1].run_id]) and corrupt == []
    assert store.clean_temporaries() == [leftover] and not leftover.exists()


def test_only_temporaries_older_than_the_given_age_are_removed(table2_store):
    """A writer that is still writing keeps its temporary file; a killed one's is cleaned."""
    import os
    import time

    store, runs = table2_store
    fresh = store.run_dir(runs[0].run_id) / ".tmp-result.json.fresh"
    stale = store.run_dir(runs[1].run_id) / ".tmp-result.json.stale"
    kept = store.run_dir(runs[1].run_id) / "notes.txt"  # not a temporary: never touched
    for path in (fresh, stale, kept):
        path.write_text("{")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(kept, (hour_ago, hour_ago))
    assert store.clean_temporaries(min_age_s=600) == [stale]
    assert fresh.exists() and not stale.exists() and kept.exists()
    assert store.clean_temporaries() == [fresh] and kept.exists()
    assert ResultStore(store.root / "unmade").clean_temporaries() == []


def test_a_temporary_exactly_the_given_age_is_removed(table2_store, monkeypatch):
    from wmquant.study import store as store_module

    store, runs = table2_store
    leftover = store.run_dir(runs[0].run_id) / ".tmp-result.json.edge"
    leftover.write_text("{")
    written = leftover.stat().st_mtime
    monkeypatch.setattr(store_module.time, "time", lambda: written + 60.0)
    assert store.clean_temporaries(min_age_s=60.0) == [leftover]


def test_corrupt_results_are_reported_by_name_and_skipped(table2_store):
    store, runs = table2_store
    _write(store, runs[0])
    truncated = store.result_path(runs[1].run_id)
    truncated.write_text(json.dumps(build_result(runs[1].overrides, runs[1].run_id))[:200])
    inconsistent = build_result(runs[2].overrides, runs[2].run_id)
    inconsistent["success_rate_by_iter"][3] = 0.99
    write_json(store.result_path(runs[2].run_id), inconsistent)
    misplaced = build_result(runs[3].overrides, runs[4].run_id)
    write_json(store.result_path(runs[3].run_id), misplaced)
    valid, corrupt = store.load_results()
    assert [r["run_id"] for r in valid] == [runs[0].run_id]
    reasons = {path: reason for path, reason in corrupt}
    assert set(reasons) == {truncated, store.result_path(runs[2].run_id), store.result_path(runs[3].run_id)}
    assert "not valid JSON" in reasons[truncated]
    assert "success_rate_by_iter[3]" in reasons[store.result_path(runs[2].run_id)]
    assert "does not match its directory" in reasons[store.result_path(runs[3].run_id)]
    assert store.completed() == {runs[0].run_id}
    statuses = {row["run_id"]: row["status"] for row in store.list_runs()}
    assert statuses[runs[1].run_id] == "corrupt" and statuses[runs[0].run_id] == "done"


def _valid():
    return build_result({"method": "rtn", "env": "wall", "n_evals": 3, "planner.max_iter": 2,
                         "encoder_wbit": 4, "encoder_abit": 8, "predictor_wbit": 4, "predictor_abit": 8}, "r")


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.pop("eval_seeds"), "missing keys: eval_seeds"),
    (lambda d: d.update(schema="wmquant.result/0"), "schema"),
    (lambda d: d.update(method="int3"), "method is 'int3'"),
    (lambda d: d.update(env="maze"), "env is 'maze'"),
    (lambda d: d.update(quant=None), "needs a quant mapping"),
    (lambda d: d["quant"]["predictor"].update(a_granularity="per_channel"), "a_granularity"),
    (lambda d: d["quant"]["encoder"].update(w_group_size=0), "w_group_size"),
    (lambda d: d["success_by_iter"][1].append(1), "success_by_iter[1] must hold 3"),
    (lambda d: d["success_by_iter"][0].__setitem__(0, 2), "outcomes of 0 or 1"),
    (lambda d: d.update(success_rate_by_iter=[0.0]), "must have 2 entries"),
    (lambda d: d.update(wall_seconds=-1), "wall_seconds"),
    (lambda d: d.update(latent_mse_by_iter="high"), "latent_mse_by_iter"),
    # one bad element among good ones: every element is checked, not just some
    (lambda d: d.update(latent_mse_by_iter=[0.1, "high"]), "latent_mse_by_iter"),
    (lambda d: d.update(planning_loss_by_iter=[0.1, None]), "planning_loss_by_iter"),
    (lambda d: d.update(eval_seeds=[0, 1, 2.0]), "eval_seeds must be 3 integers"),
    (lambda d: d.update(eval_seeds=[0, 1, True]), "eval_seeds must be 3 integers"),
    (lambda d: d.update(calibration_seeds=[7, "8"]), "calibration_seeds must be null or a list of integers"),
    (lambda d: d.update(calibration_seeds=7), "calibration_seeds must be null or a list of integers"),
    # a rate that is too low is as wrong as one that is too high
    (lambda d: d["success_rate_by_iter"].__setitem__(1, d["success_rate_by_iter"][1] - 0.5),
     "success_rate_by_iter[1]"),
    (lambda d: d.update(n_evals=0, eval_seeds=[], success_by_iter=[[], []], success_rate_by_iter=[0.0, 0.0]),
     "n_evals is 0, not a positive integer"),
])
def test_validate_result_names_the_problem(mutate, reason):
    assert validate_result(_valid()) is None
    data = _valid()
    mutate(data)
    assert reason in validate_result(data)


def test_validate_result_accepts_the_smallest_valid_values():
    """One episode, a group of one column and no calibration seeds are valid results."""
    data = build_result({"method": "rtn", "env": "wall", "n_evals": 1, "planner.max_iter": 1,
                         "W_GROUP_SIZE": 1, "encoder_wbit": 4, "predictor_wbit": 4}, "r", success_by_iter=[[1]])
    assert data["quant"]["encoder"]["w_group_size"] == 1
    data["calibration_seeds"] = None
    data["wall_seconds"] = 0
    assert validate_result(data) is None


def test_sweep_dir_is_bound_to_one_spec_and_overrides(table2_store):
    store, runs = table2_store
    table1 = load_spec("table1")
    with pytest.raises(StudyError, match="belongs to study 'table2'.*not 'table1'"):
        store.bind(table1, {}, table1.runs)
    table2 = load_spec("table2")
    with pytest.raises(StudyError, match="was run with overrides"):
        store.bind(table2, {"n_evals": 5}, table2.runs)
    assert store.bind(table2, {"planner.max_iter": 6, "n_evals": 4}, runs)["spec"] == "table2"


def _spec_file(tmp_path, name, extra_runs=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""name: grow
env: wall
columns: [0, 5]
base: {{model_name: wall, n_evals: 4, planner.max_iter: 6, quant_encoder: true, quant_iter: 1}}
runs:
  - method: fp
  - {{method: rtn, wa_bits: [8, 8]}}
{extra_runs}""")
    return load_spec(path)


def test_a_spec_that_gains_runs_extends_its_sweep_and_keeps_finished_ones(tmp_path):
    small = _spec_file(tmp_path, "small")
    store = ResultStore(tmp_path / "sweep")
    store.bind(small, {}, small.runs)
    for run in small.runs:
        store.prepare_run(run)
        _write(store, run)
    grown = _spec_file(tmp_path, "grown", "  - {method: [awq, gptq], wa_bits: [4, 16]}\n")
    sweep = store.bind(grown, {}, grown.runs)
    assert sweep["spec_hash"] == grown.spec_hash and len(sweep["runs"]) == 3
    assert set(store.completed()) == {r.run_id for r in small.runs}
    changed = _spec_file(tmp_path, "changed", "").runs[:1]  # a run dropped: not an extension
    with pytest.raises(StudyError, match="belongs to study"):
        store.bind(_spec_file(tmp_path, "other", "  - {method: rtn, wa_bits: [6, 6]}\n"), {}, changed)


def test_an_extension_is_written_and_anything_else_is_refused_unchanged(tmp_path):
    small = _spec_file(tmp_path, "small")
    store = ResultStore(tmp_path / "sweep")
    store.bind(small, {}, small.runs)
    grown = _spec_file(tmp_path, "grown", "  - {method: [awq, gptq], wa_bits: [4, 16]}\n")
    store.bind(grown, {}, grown.runs)
    # the extension is on disk: a later process plans the grown spec's runs
    assert [r.run_id for r in ResultStore(store.root).planned_runs()] == [r.run_id for r in grown.runs]
    bound = store.sweep_path.read_text()
    swapped = _spec_file(tmp_path, "swapped", "  - {method: rtn, wa_bits: [6, 6]}\n"
                                              "  - {method: rtn, wa_bits: [4, 4]}\n"
                                              "  - {method: rtn, wa_bits: [4, 8]}\n")
    more = _spec_file(tmp_path, "more", "  - {method: [awq, gptq], wa_bits: [4, 16]}\n"
                                        "  - {method: rtn, wa_bits: [6, 6]}\n")
    refusals = [
        # two runs of the bound spec dropped, three others added: more runs, but not the same ones
        (swapped, {}, [swapped.runs[0], *swapped.runs[2:]]),
        # more runs, but under other sweep overrides
        (more, {"n_evals": 5}, more.expand({"n_evals": 5})),
    ]
    for spec, overrides, runs in refusals:
        with pytest.raises(StudyError):
            store.bind(spec, overrides, runs)
        assert store.sweep_path.read_text() == bound


def test_the_same_runs_under_a_changed_spec_are_refused(tmp_path):
    small = _spec_file(tmp_path, "small")
    store = ResultStore(tmp_path / "sweep")
    store.bind(small, {}, small.runs)
    text = (tmp_path / "small.yaml").read_text().replace("columns: [0, 5]", "columns: [0, 3]")
    (tmp_path / "recolumned.yaml").write_text(text)
    recolumned = load_spec(tmp_path / "recolumned.yaml")
    assert recolumned.spec_hash != small.spec_hash and [r.run_id for r in recolumned.runs] == [r.run_id for r in small.runs]
    with pytest.raises(StudyError, match="spec hash"):
        store.bind(recolumned, {}, recolumned.runs)


def test_an_empty_runs_directory_can_be_bound(tmp_path):
    (tmp_path / "runs").mkdir()
    spec = load_spec("table2")
    assert ResultStore(tmp_path).bind(spec, {}, spec.runs)["spec"] == "table2"


def test_prepare_run_rewrites_a_stale_run_file(table2_store):
    store, runs = table2_store
    path = store.run_dir(runs[0].run_id) / "run.json"
    write_json(path, {"run_id": runs[0].run_id, "overrides": {"method": "stale"}})
    assert store.prepare_run(runs[0]) == store.run_dir(runs[0].run_id)
    assert json.loads(path.read_text()) == {"run_id": runs[0].run_id, "overrides": runs[0].overrides}


def test_a_cleared_failure_is_gone_even_for_a_run_still_pending(table2_store):
    store, runs = table2_store
    store.record_failure(runs[0].run_id, "CUDA out of memory", "Traceback ...")
    assert store.failures() == {runs[0].run_id: "CUDA out of memory"}
    store.clear_failure(runs[0].run_id)
    assert store.failures() == {} and not (store.run_dir(runs[0].run_id) / "error.json").exists()
    store.clear_failure(runs[0].run_id)  # nothing to clear is fine


def test_runs_without_sweep_file_are_not_adopted(tmp_path):
    (tmp_path / "runs" / "x").mkdir(parents=True)
    spec = load_spec("table2")
    with pytest.raises(StudyError, match="no sweep.json"):
        ResultStore(tmp_path).bind(spec, {}, spec.runs)


def test_list_runs_filters(table2_store):
    store, runs = table2_store
    for run in runs[:5]:
        _write(store, run)
    store.record_failure(runs[5].run_id, "CUDA out of memory")
    rows = store.list_runs()
    assert [r["run_id"] for r in rows] == [r.run_id for r in runs]
    assert [r["status"] for r in rows[:7]] == ["done"] * 5 + ["failed", "pending"]
    assert rows[5]["note"] == "CUDA out of memory"
    done_rtn = store.list_runs({"status": "done", "method": "rtn"})
    assert [r["run_id"] for r in done_rtn] == [runs[1].run_id]
    by_group = store.list_runs({"W_GROUP_SIZE": "128"})
    assert len(by_group) == 8 and all("G128" in r["setting"] for r in by_group)
    assert {r["run_id"] for r in store.list_runs({"quant.predictor.w_bits": 8})} == {r.run_id for r in runs[1:5]}
    assert store.list_runs({"method": "gptq"}) == []
    with pytest.raises(StudyError, match="unknown filter key 'mthod'"):
        store.list_runs({"mthod": "rtn"})
    with pytest.raises(StudyError, match="does not exist"):
        ResultStore(store.root / "nowhere").list_runs()
    (store.root / "elsewhere").mkdir()
    with pytest.raises(StudyError, match="is not a sweep directory: it has neither sweep.json nor runs/"):
        ResultStore(store.root / "elsewhere").list_runs()
    text = format_runs(rows)
    assert runs[0].run_id in text.splitlines()[1] and "failed" in text


def test_a_run_is_scored_by_its_last_iteration():
    result = build_result({"method": "fp", "n_evals": 2}, "r", success_by_iter=[[0, 0], [1, 1], [1, 0]])
    assert final_success(result) == 0.5


def test_filters_on_keys_that_only_overrides_or_results_have_are_empty_answers(table2_store):
    store, runs = table2_store
    _write(store, runs[1])
    assert store.list_runs({"W_GROUP_SIZE": "64"}) == []           # an override key, no run at 64
    assert store.list_runs({"quant.predictor.w_bits": 3}) == []    # a result key, no run at 3 bits
    assert store.list_runs({"run_id": "nope"}) == []                # a row key


def test_run_directories_outside_the_plan_are_listed_after_it_from_their_run_files(tmp_path):
    store = ResultStore(tmp_path)
    for run_id, method in (("b-run", "omse"), ("a-run", "rtn")):
        write_json(store.run_dir(run_id) / "run.json",
                   {"run_id": run_id, "overrides": {"method": method, "n_evals": 3, "predictor_wbit": 4}})
    rows = store.list_runs()
    assert [(r["run_id"], r["method"], r["n_evals"], r["status"]) for r in rows] == [
        ("a-run", "rtn", 3, "pending"), ("b-run", "omse", 3, "pending")]
    spec = load_spec("table2")
    planned = ResultStore(tmp_path / "planned")
    planned.bind(spec, {}, spec.runs)
    write_json(planned.run_dir("zz-extra") / "run.json", {"run_id": "zz-extra", "overrides": {"method": "rtn"}})
    listed = [r["run_id"] for r in planned.list_runs()]
    assert listed == [r.run_id for r in spec.runs] + ["zz-extra"]


def test_format_runs_aligns_columns_and_leaves_unknowns_blank():
    rows = [{"run_id": "a-long-run-id", "status": "done", "setting": "W4A8", "final_success": 0.5,
             "n_evals": 50, "wall_seconds": 12.4, "note": ""},
            {"run_id": "b", "status": "pending", "setting": "?", "final_success": None,
             "n_evals": None, "wall_seconds": None, "note": "x" * 80}]
    lines = format_runs(rows).splitlines()
    assert lines[1].split() == ["a-long-run-id", "done", "W4A8", "0.50", "50", "12"]
    assert lines[2].split() == ["b", "pending", "?", "x" * 60]
    # every cell starts where its column's header does
    starts = {m.group(): m.start() for m in re.finditer(r"\S+", lines[0])}
    cells = {"status": ("done", "pending"), "setting": ("W4A8", "?"), "final": ("0.50", None),
             "n": ("50", None), "seconds": ("12", None), "note": (None, "x" * 60)}
    for header, values in cells.items():
        for line, value in zip(lines[1:], values):
            if value is not None:
                assert line[starts[header] - 1] == " " and line[starts[header]:].split()[0] == value


def test_a_cut_off_run_shows_how_far_its_checkpoint_got(table2_store):
    """A run killed mid-planning stays pending, and the listing says where it will resume."""
    import numpy as np

    from wmquant.planning.checkpoint import CHECKPOINT_FILE

    store, runs = table2_store
    _write(store, runs[0])
    np.savez(store.run_dir(runs[1].run_id) / CHECKPOINT_FILE, iterations_done=np.array(4))
    (store.run_dir(runs[2].run_id) / CHECKPOINT_FILE).write_bytes(b"not an npz")
    # a finished run whose stale checkpoint was left behind is simply done
    np.savez(store.run_dir(runs[0].run_id) / CHECKPOINT_FILE, iterations_done=np.array(2))
    rows = {row["run_id"]: row for row in store.list_runs()}
    assert rows[runs[1].run_id]["status"] == "pending"
    assert rows[runs[1].run_id]["note"] == "checkpoint after MPC iteration 4"
    assert rows[runs[2].run_id]["note"] == ""  # unreadable: planning starts over, nothing to promise
    assert rows[runs[0].run_id]["status"] == "done" and rows[runs[0].run_id]["note"] == ""
