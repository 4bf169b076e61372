"""The published study documents are generated from the published results: their text equals a
regeneration from results/, no result is typed by hand in the prose template, and every table row's
numbers equal an independent recomputation from the runs' result.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wmquant.study.prose import hand_written_fractions, render_prose, run_name
from wmquant.study.document import study_document_text, study_reports
from wmquant.study.report import report_figures

statsmodels = pytest.importorskip("statsmodels")
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar  # noqa: E402
from statsmodels.stats.multitest import multipletests  # noqa: E402
from statsmodels.stats.proportion import proportion_confint  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "wall_study"
DOCUMENT = ROOT / "docs" / "study_wall.md"
PREFACE = ROOT / "docs" / "study_wall.preface.md"
SPECS = ("table1", "table3", "table4", "table7", "engines_wall", "methods_wall")
#: Each published study document: its file, its prose template, its sweeps and its title (the
#: `wmquant report ... --document` command in the template).
DOCUMENTS = {
    "study_wall": (DOCUMENT, PREFACE, SPECS, "Reproducing the paper's Wall tables on the shipped model"),
    "quantization_wall": (ROOT / "docs" / "quantization_wall.md", ROOT / "docs" / "quantization_wall.preface.md",
                          ("methods_wall",), "Every PTQ method on the shipped Wall model: W8A8, W4A16, W4A16 G128"),
}

pytestmark = pytest.mark.skipif(not RESULTS.is_dir() or not DOCUMENT.is_file(), reason="published Wall study not present")


@pytest.fixture(scope="module")
def reports():
    return study_reports([RESULTS / spec for spec in SPECS])


@pytest.mark.parametrize("name", DOCUMENTS)
def test_the_preface_types_no_result_by_hand(name):
    _, preface, _, _ = DOCUMENTS[name]
    assert hand_written_fractions(preface.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("name", DOCUMENTS)
def test_the_document_is_the_regeneration_from_published_results(name):
    document, preface, specs, title = DOCUMENTS[name]
    reports = study_reports([RESULTS / spec for spec in specs])
    figures = {spec: report_figures(document.with_suffix("") / spec) for spec in reports}
    text = study_document_text(reports, figures, document, title, preface.read_text(encoding="utf-8"))
    assert text == document.read_text(encoding="utf-8"), (
        f"docs/{name}.md differs from its regeneration; run the `wmquant report ... --document docs/{name}.md` "
        f"command of docs/{name}.preface.md")


def _results(spec: str) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in (RESULTS / spec / "runs").glob("*/result.json")}


def _section_rows(spec: str) -> list[list[str]]:
    text = DOCUMENT.read_text(encoding="utf-8")
    section = text.split(f"## Study {spec}\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table[1:]
            if not line.startswith("| Setting")][: len(_results(spec))]


@pytest.mark.parametrize("spec", SPECS)
def test_every_table_row_equals_an_independent_recomputation(spec):
    results = _results(spec)
    fp = next(r for r in results.values() if r["method"] == "fp" and r["config"]["engine"]["precision"] == "fp32")
    final = {run_id: r["success_by_iter"][-1] for run_id, r in results.items()}
    tested = [run_id for run_id, r in results.items() if r is not fp and r["eval_seeds"] == fp["eval_seeds"]]

    def last_common(run_id):  # outcomes after the last MPC iteration both runs reached
        k = min(len(results[run_id]["success_by_iter"]), len(fp["success_by_iter"])) - 1
        return results[run_id]["success_by_iter"][k], fp["success_by_iter"][k]

    raw = []
    for run_id in tested:
        ours, theirs = last_common(run_id)
        table = [[sum(a and b for a, b in zip(ours, theirs)), sum(a and not b for a, b in zip(ours, theirs))],
                 [sum(b and not a for a, b in zip(ours, theirs)), sum(not a and not b for a, b in zip(ours, theirs))]]
        raw.append(sm_mcnemar(table, exact=True).pvalue)
    holm = dict(zip(tested, multipletests(raw, method="holm")[1])) if raw else {}

    rows = _section_rows(spec)
    assert len(rows) == len(results)
    last_column = [key for key in rows[0] if key.endswith(" iters")][-1]
    for row in rows:
        run_id = row["Run"]
        outcomes = final[run_id]
        successes, n = sum(outcomes), len(outcomes)
        lo, hi = proportion_confint(successes, n, method="wilson")
        star = "*" if holm.get(run_id, 1.0) < 0.05 else ""
        expected = f"{successes / n:.2f}{star} [{lo:.2f}, {hi:.2f}]"
        assert row[last_column].startswith(expected), (spec, run_id, row[last_column], expected)


def test_prose_numbers_equal_direct_computations(reports):
    by_spec = {name: report for name, (_, report) in reports.items()}
    fp = _results("table3")["fp-57e1fd1d"]
    rtn = next(r for i, r in _results("table3").items() if run_name(i) == "rtn_w4a4_gpc_pt")
    sentence = ("{{rate table3/rtn_w4a4_gpc_pt}} {{loss table3/rtn_w4a4_gpc_pt 5}} {{lossratio table3/rtn_w4a4_gpc_pt}} "
                "{{first table3/fp}}")
    rate, loss, ratio, first = render_prose(sentence, by_spec).split()
    assert rate == f"{sum(rtn['success_by_iter'][-1]) / 50:.2f}"
    assert loss == f"{rtn['planning_loss_by_iter'][4]:#.2g}"
    assert ratio == f"{rtn['planning_loss_by_iter'][-1] / fp['planning_loss_by_iter'][-1]:.1f}"
    assert first == f"{sum(fp['success_by_iter'][0]) / 50:.2f}"
    assert render_prose("{{count table1/*_w3a16_*}}", by_spec) == "8"  # 4 methods x 2 weight granularities
