"""Reports: numbers, intervals, paper numbers and McNemar marks in every format."""

import csv
import io
import re
import statistics

import pytest
from fake_runner import build_result

from wmquant.errors import StudyError
from wmquant.io import write_json
from wmquant.study.report import build_report, column_index, replicate_table, write_report
from wmquant.study.spec import load_spec
from wmquant.study.store import ResultStore

OVERRIDES = {"n_evals": 10, "planner.max_iter": 5}


def _series(final, first=None):
    """Five iterations of ten episodes: `first` at iteration 1, `final` from iteration 2 on."""
    first = final if first is None else first
    return [first] + [final] * 4


def _find(runs, method, w, a, aqg="per_tensor"):
    mode = {"per_tensor": "layer_wise", "per_token": "token_wise"}[aqg]
    return next(r for r in runs if r.overrides["method"] == method and r.overrides.get("predictor_wbit") == w
                and r.overrides.get("predictor_abit") == a and r.overrides.get("calib_mode_a") == mode)


@pytest.fixture()
def sweep(tmp_path):
    spec = load_spec("table3")
    runs = spec.expand(OVERRIDES)
    store = ResultStore(tmp_path / "sweep")
    store.bind(spec, OVERRIDES, runs)

    def put(run, series, seeds=None):
        store.prepare_run(run)
        result = build_result(run.overrides, run.run_id, success_by_iter=series)
        if seeds is not None:
            result["eval_seeds"] = seeds
        write_json(store.result_path(run.run_id), result)
        return run.run_id

    ids = {
        "fp": put(runs[0], _series([1] * 9 + [0], first=[1] * 5 + [0] * 5)),
        "rtn88": put(_find(runs, "rtn", 8, 8), _series([1] * 9 + [0])),
        "omse44": put(_find(runs, "omse", 4, 4), _series([0] * 10)),
        "sq44": put(_find(runs, "smoothquant", 4, 4), _series([1] * 3 + [0] * 7)),
        "omni44": put(_find(runs, "omniquant", 4, 4), _series([0] * 10), seeds=list(range(500, 510))),
    }
    corrupt = _find(runs, "rtn", 6, 6)
    store.prepare_run(corrupt)
    store.result_path(corrupt.run_id).write_text('{"schema": "wmquant.result/1", "run_id": ')
    ids["corrupt"] = corrupt.run_id
    return store, runs, ids


def test_column_mapping():
    assert [column_index(k) for k in (0, 1, 5, 50)] == [0, 0, 4, 49]


def test_report_numbers_intervals_paper_and_mcnemar(sweep):
    store, runs, ids = sweep
    report = build_report(store.root)
    assert report.columns == [0, 5]  # planner.max_iter=5 reaches the "5 iters" column, no further
    rows = {row.run_id: row for row in report.rows}
    assert len(report.rows) == len(runs) == 33
    fp = rows[ids["fp"]]
    assert (fp.cells[0].successes, fp.cells[5].successes) == (5, 9)
    assert (fp.cells[0].lo, fp.cells[0].hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert fp.paper == {0: 0.48, 5: 0.94, 10: 0.94, 20: 0.94, 30: 0.94, 40: 0.94, 50: 0.94}
    omse = rows[ids["omse44"]].cells[5]
    assert (omse.b, omse.c, omse.p_vs_fp) == (0, 9, pytest.approx(2 / 2 ** 9))
    assert rows[ids["rtn88"]].cells[5].p_vs_fp == 1.0
    assert rows[ids["omse44"]].cells[0].p_vs_fp is None  # final column only by default
    assert rows[ids["omni44"]].cells[5].p_vs_fp is None and report.unpaired == [ids["omni44"]]
    assert rows[ids["corrupt"]].status == "corrupt" and rows[ids["corrupt"]].paper[50] == 0.88
    pending = [row for row in report.rows if row.status == "pending"]
    assert len(pending) == 33 - 6 and all(row.paper for row in pending)
    pairs = {(c.method_a, c.method_b): c for c in report.comparisons}
    assert set(pairs) == {("omse", "smoothquant")}  # omniquant's episodes differ: not paired
    assert (pairs["omse", "smoothquant"].b, pairs["omse", "smoothquant"].c) == (0, 3)
    assert pairs["omse", "smoothquant"].p_value == pytest.approx(0.25)
    chi2 = {row.run_id: row for row in build_report(store.root, mcnemar_method="chi2_cc").rows}
    assert chi2[ids["omse44"]].cells[5].p_vs_fp == pytest.approx(0.00766, abs=5e-5)  # (|0-9|-1)^2/9 = 7.11
    with pytest.raises(StudyError, match="unknown McNemar method"):
        build_report(store.root, mcnemar_method="z")
    every = build_report(store.root, mcnemar_scope="all")
    assert {row.run_id: row for row in every.rows}[ids["omse44"]].cells[0].p_vs_fp == pytest.approx(2 / 2 ** 5)


def test_report_files(sweep):
    store, runs, ids = sweep
    (store.root / "figures").mkdir()
    (store.root / "figures" / "rollouts.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    paths = write_report(store.root)
    assert paths["md"].parent == store.root / "report"
    md = paths["md"].read_text()
    assert "| FP32 | 32 | 32 | \u2013 | \u2013 | 0.50 [0.24, 0.76] (0.48) | 0.90 [0.60, 0.98] (0.94) |" in md
    assert "| OMSE | 4 | 4 | \u2013 | per-tensor | 0.00* [0.00, 0.28] (0.00) | 0.00* [0.00, 0.28] (0.06) |" not in md
    assert "| OMSE | 4 | 4 | \u2013 | per-tensor | 0.00 [0.00, 0.28] (0.00) | 0.00* [0.00, 0.28] (0.06) |" in md
    assert "| RTN | 8 | 8 | \u2013 | per-tensor | 0.90 [0.60, 0.98] (0.48) | 0.90 [0.60, 0.98] (0.94) |" in md
    assert "| RTN | 6 | 6 | \u2013 | per-tensor | \u2014 (0.24) | \u2014 (0.78) |" in md
    assert "McNemar" in md and "max(k-1, 0)" in md and str(store.result_path(ids["corrupt"])) in md
    assert "](figures/success_curves.png)" in md

    table = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    by_id = {row["run_id"]: row for row in table}
    assert len(table) == 33
    assert by_id[ids["fp"]]["it0_success"] == "0.5000" and by_id[ids["fp"]]["it0_paper"] == "0.48"
    assert float(by_id[ids["omse44"]]["it5_p_vs_fp"]) == pytest.approx(2 / 2 ** 9, rel=1e-3)
    assert float(by_id[ids["omse44"]]["it5_hi"]) == pytest.approx(0.2775, abs=1e-4)
    assert by_id[ids["corrupt"]]["status"] == "corrupt" and by_id[ids["corrupt"]]["it5_success"] == ""

    tex = paths["tex"].read_text()
    assert "0.00$^{*}$ {\\scriptsize [0.00, 0.28] (0.06)}" in tex and "\\#W" in tex and "\\toprule" in tex

    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 3  # two report figures and the extra PNG
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    assert "0.00*" in page and "p=0.00391" in page and ids["corrupt"] in page
    assert paths["success_curves"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _sweep_with_results(root, spec_name, count):
    """A sweep dir of the shipped spec whose first `count` runs have (synthetic) results."""
    spec = load_spec(spec_name)
    runs = spec.expand(OVERRIDES)
    store = ResultStore(root)
    store.bind(spec, OVERRIDES, runs)
    for run in runs[:count]:
        store.prepare_run(run)
        write_json(store.result_path(run.run_id), build_result(run.overrides, run.run_id))
    return store, runs


def test_module_ablation_layout(tmp_path):
    store, _ = _sweep_with_results(tmp_path / "t7", "table7", 3)
    md = write_report(store.root, out_dir=tmp_path / "out")["md"].read_text()
    assert "| Method | #W_Enc | #A_Enc | #W_Pred | #A_Pred | #G | AQG |" in md
    assert "| RTN | 6 | 8 | 8 | 8 | \u2013 | per-tensor |" in md and "(0.42)" in md


def test_empty_or_missing_directories(tmp_path):
    with pytest.raises(StudyError, match="does not exist"):
        write_report(tmp_path / "nowhere")
    spec = load_spec("table2")
    store = ResultStore(tmp_path / "empty")
    store.bind(spec, {}, spec.runs)
    with pytest.raises(StudyError, match="no results in .*17 planned run"):
        write_report(store.root)
    store.prepare_run(spec.runs[0])
    store.result_path(spec.runs[0].run_id).write_text("{}")
    with pytest.raises(StudyError, match="1 corrupt result file.*result.json: schema"):
        write_report(store.root)


def test_engine_variants_get_their_own_rows_and_paired_tests(tmp_path):
    # FP32, TF32, BF16, then W8A8 per-token with fake and with real kernels; W4A16 pending
    store, runs = _sweep_with_results(tmp_path / "engines", "engines_wall", 5)
    by_variant = {run.overrides.get("engine.precision", run.overrides.get("engine.backend", "fp32")): run.run_id
                  for run in runs[:5]}
    report = build_report(store.root)
    labels = [(row.run_id, row.key.method, row.variant) for row in report.rows]
    assert labels[:5] == [(by_variant["fp32"], "fp", ""), (by_variant["tf32"], "fp", "tf32"),
                          (by_variant["bf16"], "fp", "bf16"), (by_variant["fake"], "rtn", ""),
                          (by_variant["real"], "rtn", "real kernels")]
    assert [row.status for row in report.rows[5:]] == ["pending", "pending"]
    assert {row.variant for row in report.rows[5:]} == {"", "real kernels"}  # read from the planned overrides
    assert report.baseline.run_id == by_variant["fp32"]  # never a TF32 / BF16 run
    assert [(c.method_a, c.variant_a, c.method_b, c.variant_b) for c in report.comparisons] == [
        ("rtn", "", "rtn", "real kernels")]
    write_report(store.root, tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| RTN (real kernels) | 8 | 8 |" in text and "| FP (bf16) | 32 | 32 |" in text
    assert "| RTN | RTN (real kernels) |" in text  # the paired test between the two backends


def test_formats_are_compared_one_factor_at_a_time(tmp_path):
    store, _ = _sweep_with_results(tmp_path / "formats", "formats_wall", 16)
    report = build_report(store.root)
    pairs = {(c.setting, c.format_a, c.variant_a, c.format_b, c.variant_b) for c in report.comparisons}
    assert len(report.comparisons) == len(pairs) == 17
    # W8A8: three formats with fake quantization, each backend against the other, and the two real kernels
    assert ("W8A8 per-channel per-token", "INT", "", "FP8-E4M3", "") in pairs
    assert ("W8A8 per-channel per-token", "", "", "", "real kernels") in pairs
    assert ("W8A8 per-channel per-token FP8-E4M3", "", "", "", "real kernels") in pairs
    assert ("W8A8 per-channel per-token", "INT", "real kernels", "FP8-E4M3", "real kernels") in pairs
    # the fused Triton INT8 kernels against fake quantization and against torch's INT8 kernels
    assert ("W8A8 per-channel per-token", "", "", "", "real kernels (triton INT8)") in pairs
    assert ("W8A8 per-channel per-token", "", "real kernels", "", "real kernels (triton INT8)") in pairs
    # a format's blocks stand in for a group size: INT4 G32 against the microscaled floats
    assert ("W4A32", "INT G32", "", "MXFP4 blocks of 32", "") in pairs
    assert ("W4A4 per-token", "MXFP4 blocks of 32", "", "NVFP4 blocks of 16", "") in pairs
    # never two factors at once (FP8-E5M2 fake quantization against either real kernel)
    assert not [c for c in report.comparisons if c.variant_a != c.variant_b and c.format_a != c.format_b]
    text = write_report(store.root, tmp_path / "out")["md"].read_text()
    assert "| W4A32 | RTN INT G32 | RTN MXFP4 blocks of 32 |" in text
    assert "| W8A8 per-channel per-token FP8-E4M3 | RTN | RTN (real kernels) |" in text


def test_study_document_collects_several_sweeps(sweep, tmp_path):
    from wmquant.cli import main

    store, _, _ = sweep
    second, _ = _sweep_with_results(tmp_path / "table7", "table7", 3)
    preface = tmp_path / "preface.md"
    preface.write_text("Our reading: **8 bits are free.**\n")
    document = tmp_path / "docs" / "study.md"
    assert main(["report", str(store.root), str(second.root), "--document", str(document), "--title", "Wall study",
                 "--preface", str(preface), "--no-model-figures"]) == 0
    text = document.read_text()
    assert text.startswith("# Wall study\n\nOur reading: **8 bits are free.**")
    assert text.index("## Study table3") < text.index("## Study table7")
    assert "Runs: 5 complete of 33" in text and "Runs: 3 complete of 23" in text
    for spec_name in ("table3", "table7"):  # every link of the document resolves, relative to it
        assert (document.parent / "study" / spec_name / "report.html").is_file()
    targets = re.findall(r"\]\(([^)]+)\)", text)
    assert len(targets) >= 2 * 5  # per sweep: two figures and the HTML, CSV and LaTeX reports
    for target in targets:
        assert (document.parent / target).is_file(), target


def test_report_refuses_several_sweeps_without_a_document(sweep, tmp_path, capsys):
    from wmquant.cli import main

    store, _, _ = sweep
    assert main(["report", str(store.root), str(store.root)]) == 2
    assert "need --document" in capsys.readouterr().err


@pytest.mark.parametrize("alpha", ["2", "0", "-0.1"])
def test_report_refuses_an_alpha_outside_0_1(sweep, alpha, capsys):
    from wmquant.cli import main

    store, _, _ = sweep
    assert main(["report", str(store.root), "--alpha", alpha, "--no-model-figures"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--alpha {float(alpha)} is not a significance level" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("margin", ["1", "0", "-0.1"])
def test_report_refuses_a_margin_outside_0_1(sweep, margin, capsys):
    from wmquant.cli import main

    store, _, _ = sweep
    assert main(["report", str(store.root), "--margin", margin, "--no-model-figures"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--margin {float(margin)} is not a difference in success rate" in err and len(err.splitlines()) == 1
    assert not (store.root / "report").exists()


def test_report_margin_reaches_the_document(sweep):
    from wmquant.cli import main

    store, _, _ = sweep
    assert main(["report", str(store.root), "--margin", "0.3", "--no-model-figures"]) == 0
    assert "equivalent to FP within \u00b10.30" in (store.root / "report" / "report.md").read_text()


def test_stars_come_from_holm_within_the_tests_against_fp(sweep):
    store, _, ids = sweep
    report = build_report(store.root)
    rows = {row.run_id: row for row in report.rows}
    sq, omse, rtn = rows[ids["sq44"]].cells[5], rows[ids["omse44"]].cells[5], rows[ids["rtn88"]].cells[5]
    # Family of 3 tests: p = 2/2^9, 2/2^6, 1 -> Holm 3 x 2/2^9, max(that, 2 x 2/2^6), 1.
    assert (sq.p_vs_fp, omse.p_vs_fp, rtn.p_vs_fp) == pytest.approx((2 / 64, 2 / 512, 1.0))
    assert (omse.p_holm, sq.p_holm, rtn.p_holm) == pytest.approx((6 / 512, 4 / 64, 1.0))
    assert report.detectable() == (pytest.approx(0.6), pytest.approx(0.7), 3, 10)  # 2/2^6 < 0.05; 2/2^7 < 0.05/3
    md = write_report(store.root)["md"].read_text()
    # raw p 0.031 < 0.05 but Holm 0.0625: no star for SmoothQuant; OMSE keeps its star
    assert "| SmoothQuant | 4 | 4 | \u2013 | per-tensor | 0.30 [0.11, 0.60] (0.00) | 0.30 [0.11, 0.60] (0.02) |" in md
    assert "| OMSE | 4 | 4 | \u2013 | per-tensor | 0.00 [0.00, 0.28] (0.00) | 0.00* [0.00, 0.28] (0.06) |" in md
    assert "Holm-adjusted within this table's family of 3 tests against FP" in md
    assert "cannot call any difference below 0.60 significant, and after Holm over 3 tests none below 0.70" in md


def test_rows_carry_the_paired_difference_and_equivalence(sweep):
    store, _, ids = sweep
    report = build_report(store.root, margin=0.30)
    rows = {row.run_id: row for row in report.rows}
    rtn, omse = rows[ids["rtn88"]].cells[5], rows[ids["omse44"]].cells[5]
    assert rtn.diff == 0 and rtn.diff_lo < 0 < rtn.diff_hi and rtn.equivalent  # identical outcomes, margin 0.30
    assert not build_report(store.root).rows[1].cells[5].equivalent  # 10 episodes cannot show +-0.10
    assert omse.diff == pytest.approx(-0.9) and omse.diff_hi < 0 and not omse.equivalent
    paths = write_report(store.root)
    md = paths["md"].read_text()
    assert re.search(r"\| -0\.90 \[-0\.\d\d, -0\.\d\d\] \| " + re.escape(ids["omse44"]), md)
    table = {row["run_id"]: row for row in csv.DictReader(io.StringIO(paths["csv"].read_text()))}
    assert float(table[ids["sq44"]]["it5_p_vs_fp"]) == pytest.approx(2 / 64, rel=1e-3)
    assert float(table[ids["sq44"]]["it5_p_holm"]) == pytest.approx(4 / 64, rel=1e-3)
    assert table[ids["omse44"]]["it5_equivalent"] == "false" and table[ids["fp"]]["it5_diff"] == ""


def test_replicates_are_tested_against_their_own_models_fp_and_summarised(tmp_path):
    spec = load_spec("replicates_wall")
    overrides = {"n_evals": 10, "planner.max_iter": 5, "act_scales_dir": "act_scales"}
    runs = spec.expand(overrides)
    store = ResultStore(tmp_path / "sweep")
    store.bind(spec, overrides, runs)

    def find(model, offset, method, w, a, aqg="layer_wise"):
        return next(r for r in runs if r.overrides.get("model_name") == model and r.overrides.get("method") == method
                    and r.overrides.get("calib_seed_offset", 0) == offset and r.overrides.get("predictor_wbit") == w
                    and r.overrides.get("predictor_abit") == a and r.overrides.get("encoder_wbit") == w
                    and r.overrides.get("calib_mode_a", "layer_wise") == aqg)

    def put(run, final):
        store.prepare_run(run)
        write_json(store.result_path(run.run_id), build_result(run.overrides, run.run_id, success_by_iter=_series(final)))
        return run.run_id

    fp = next(r for r in runs if r.overrides["method"] == "fp" and r.overrides["model_name"] == "wall")
    fp1 = next(r for r in runs if r.overrides["method"] == "fp" and r.overrides["model_name"] == "wall_seed1")
    put(fp, [1] * 10)
    put(fp1, [0] * 10)  # the second model fails everything in FP
    ids = [put(find("wall", offset, "rtn", 4, 4), [1] * k + [0] * (10 - k)) for offset, k in ((0, 2), (1, 3), (2, 1))]
    seed1 = put(find("wall_seed1", 0, "rtn", 4, 4), [0] * 10)
    report = build_report(store.root)
    rows = {row.run_id: row for row in report.rows}
    assert rows[ids[0]].cells[5].c == 8  # against the shipped model's FP
    assert rows[seed1].cells[5].p_vs_fp == 1.0 and rows[seed1].cells[5].c == 0  # against wall_seed1's own FP
    assert not [c for c in report.comparisons if {c.run_a, c.run_b} & set(ids)]  # one method: nothing to compare
    header, body = replicate_table(report)
    rtn = next(line for line in body if line[0].startswith("RTN"))
    assert rtn[1] == "4" and rtn[3] == "0.15" and rtn[5] == "0.00-0.30"
    assert rtn[2] == "wall cal0 0.20; wall cal1 0.30; wall cal2 0.10; wall_seed1 cal0 0.00"
    assert rtn[4] == f"{statistics.stdev([0.2, 0.3, 0.1, 0.0]):.2f}"
    fp_line = next(line for line in body if line[0].startswith("FP"))
    assert fp_line[1] == "2" and fp_line[6] == "\u2013"  # baselines are not tested
    assert "\n## Replicates\n" in write_report(store.root)["md"].read_text()
