"""The results store: binding to one spec, atomic results, corrupt files, listing."""

import json

import pytest
from fake_runner import build_result

from wmquant.errors import StudyError
from wmquant.io import atomic_path, write_json
from wmquant.study.spec import load_spec
from wmquant.study.store import ResultStore, format_runs, validate_result


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
])
def test_validate_result_names_the_problem(mutate, reason):
    assert validate_result(_valid()) is None
    data = _valid()
    mutate(data)
    assert reason in validate_result(data)


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
