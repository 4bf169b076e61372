"""The report's four renderings hold their structure (wmquant.study.report): every Markdown, LaTeX and
HTML table row has the header's number of cells, and each section appears exactly when it has
something to show (description, corrupt files, replicates, comparisons, figures)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fake_runner import build_result
from test_study_report_building import RTN44, put

from wmquant.io import write_json
from wmquant.study import report as report_module
from wmquant.study.paper import SettingKey
from wmquant.study.report import (
    Cell,
    Report,
    build_report,
    cell_text,
    comparison_table,
    footnotes,
    groups_per_row_text,
    main_table,
    render_html,
    render_latex,
    render_markdown,
    setting_values,
)
from wmquant.study.spec import load_spec
from wmquant.study.store import ResultStore

OVERRIDES = {"n_evals": 6, "planner.max_iter": 3}


def _sweep(root: Path, with_comparison: bool = True, corrupt: bool = True) -> ResultStore:
    spec = load_spec("table3")
    runs = spec.expand(OVERRIDES)
    store = ResultStore(root)
    store.bind(spec, OVERRIDES, runs)
    chosen = [runs[0]] + [r for r in runs if r.overrides.get("predictor_wbit") == 4 and r.overrides.get("predictor_abit") == 4
                          and r.overrides.get("calib_mode_a") == "layer_wise"][: 2 if with_comparison else 1]
    for index, run in enumerate(chosen):
        store.prepare_run(run)
        series = [[1, 1, 1, 1, 0, 0]] * 3 if index == 0 else [[1, 0, 0, 0, 0, 0]] * 2 + [[index % 2, 0, 1, 0, 0, 0]]
        write_json(store.result_path(run.run_id), build_result(run.overrides, run.run_id, success_by_iter=series))
    if corrupt:
        bad = runs[-1]
        store.prepare_run(bad)
        store.result_path(bad.run_id).write_text("{ not json")
    return store


def _md_tables(text: str) -> list[list[str]]:
    """The Markdown tables of a text, each as its lines."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def _md_cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |"), line
    return re.split(r"(?<!\\) \| ", line[2:-2])


def test_markdown_tables_sections_and_notes(tmp_path):
    store = _sweep(tmp_path / "sweep")
    report = build_report(store.root)
    figure = tmp_path / "out" / "figures" / "curves.png"
    text = render_markdown(report, {"curves": figure}, tmp_path / "out")
    assert text.startswith(f"# {report.title}\n\n{report.description}\n\n")
    tables = _md_tables(text)
    assert len(tables) == 2  # the runs, the comparisons
    for table in tables:
        header = _md_cells(table[0])
        assert table[1] == "|" + "---|" * len(header)
        assert all(len(_md_cells(line)) == len(header) for line in table[2:])
    assert len(tables[0]) == 2 + len(report.rows) and len(tables[1]) == 2 + len(report.comparisons)
    assert _md_cells(tables[0][0]) == main_table(report)[0]
    for note in footnotes(report):
        assert "- " + note.replace("*", "\\*") in text.splitlines()
    bad = report.corrupt[0]
    assert f"\n## Corrupt result files (excluded)\n\n- `{bad.path}`: {bad.reason}\n\n## Methods compared" in text
    assert "- " + footnotes(report)[-1].replace("*", "\\*") + "\n\n## Corrupt" in text
    assert "\n## Methods compared at the same setting (McNemar, exact)\n\n|" in text
    assert "No two methods share" not in text
    assert text.rstrip().endswith("## Figures\n\n![curves](figures/curves.png)")
    # level 2 inside a study document: every heading one deeper
    deeper = render_markdown(report, {}, tmp_path / "out", level=2)
    assert deeper.startswith(f"## {report.title}\n") and "\n### Figures\n" in deeper


def test_markdown_without_description_corrupt_files_or_comparisons(tmp_path):
    store = _sweep(tmp_path / "sweep", with_comparison=False, corrupt=False)
    report = build_report(store.root)
    report.description = ""
    text = render_markdown(report, {}, tmp_path)
    assert text.startswith(f"# {report.title}\n\nEnvironment: wall.")
    assert "Corrupt result files" not in text and "\n## Replicates\n" not in text
    assert "\n## Methods compared at the same setting (McNemar, exact)\n\nNo two methods share a bit setting" in text
    assert len(_md_tables(text)) == 1


def test_latex_rows_match_the_column_spec(tmp_path):
    report = build_report(_sweep(tmp_path / "sweep").root)
    text = render_latex(report)
    spec = re.search(r"\\begin\{tabular\}\{([lc]+)\}", text).group(1)
    lines = text.split("\n")
    body = lines[lines.index("\\midrule") + 1: lines.index("\\bottomrule")]
    header = lines[lines.index("\\toprule") + 1]
    assert spec[0] == "l" and len(spec) == 5 + len(report.columns)  # Method, #W, #A, #G, AQG, the columns
    for line in [header] + body:
        assert line.endswith(" \\\\") and len(re.split(r"(?<!\\)&", line)) == len(spec), line
    assert len(body) == len(report.rows)
    pending = body[[row.status for row in report.rows].index("pending")]
    assert re.search(r"& --- \(0\.\d\d\) &", pending)  # no result yet, the paper's number beside the dash
    assert header.startswith("Method & \\#W & \\#A & \\#G & AQG & 0 iters")
    assert lines[-4:] == ["\\bottomrule", "\\end{tabular}", "\\end{table*}", ""]


class _Page(HTMLParser):
    """Tables (rows of cell texts), paragraphs, headings and images of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tables, self.paragraphs, self.headings, self.images, self.items = [], [], [], [], []
        self._text, self._tag = None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th", "p", "h1", "h2", "li"):
            self._text, self._tag = [], tag
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag != self._tag:
            return
        text = "".join(self._text).strip()
        if tag in ("td", "th"):
            self.tables[-1][-1].append(text)
        elif tag == "p":
            self.paragraphs.append(text)
        elif tag == "li":
            self.items.append(text)
        else:
            self.headings.append(text)
        self._text = self._tag = None


@pytest.mark.parametrize("full", [True, False])
def test_html_tables_sections_and_notes(tmp_path, full):
    store = _sweep(tmp_path / "sweep", with_comparison=full, corrupt=full)
    report = build_report(store.root)
    if not full:
        report.description = ""
    page, text = _Page(), render_html(report, {"curves": b"\x89PNG fake"})
    page.feed(text)
    assert ("</li>\n</ul>\n<h2>Methods compared" in text) == full
    assert text.count("<tr>") == text.count("</tr>") == len(report.rows) + 1 + (len(report.comparisons) + 1 if full else 0)
    header, _ = main_table(report)
    runs = page.tables[0]
    assert runs[0] == header and len(runs) == 1 + len(report.rows)
    assert all(len(row) == len(header) for row in runs)
    assert [row[header.index("Run")] for row in runs[1:]] == [row.run_id for row in report.rows]
    assert page.headings[0] == report.title
    assert (report.description in page.paragraphs) == full and (page.paragraphs[0] == report.description) == full
    notes = footnotes(report)
    assert [p for p in page.paragraphs if p in notes] == notes
    assert ("Corrupt result files (excluded)" in page.headings) == full and len(page.items) == len(report.corrupt)
    assert page.headings[-2:] == ["Methods compared at the same setting (McNemar, exact)", "Figures"]
    if full:
        comparisons = page.tables[1]
        assert len(comparisons) == 1 + len(report.comparisons) == 2
        assert all(len(row) == len(comparisons[0]) for row in comparisons)
    else:
        assert len(page.tables) == 1 and "No two methods share a bit setting with paired episodes." in page.paragraphs
    assert page.images == [{"alt": "curves", "src": "data:image/png;base64,iVBORyBmYWtl"}]


def _loose(root: Path, results: dict[str, tuple[dict, list[list[int]]]]) -> ResultStore:
    """A directory of results with no sweep file: run id -> (overrides, outcomes by iteration)."""
    store = ResultStore(root)
    for run_id, (overrides, series) in results.items():
        put(store, run_id, overrides, series)
    return store


def test_footnotes_name_the_test_its_scope_and_the_runs_it_could_not_test(tmp_path):
    series = [[1, 1, 0, 0]] * 2
    store = _loose(tmp_path / "a", {"fp": ({"method": "fp"}, series), "rtn": (RTN44, series),
                                    "other": (dict(RTN44, model_name="wall_seed2"), series)})
    notes = footnotes(build_report(store.root))
    assert notes[1] == "Cells: success rate [Wilson 95% interval]; this spec names no paper table."
    mcnemar = next(n for n in notes if n.startswith("* McNemar"))
    assert mcnemar.startswith("* McNemar's exact test on per-episode outcomes against the FP baseline (fp) at the "
                              "last column both runs reach, Holm-adjusted within this table's family of 1 tests")
    assert notes[-1] == "Without an FP baseline of the same model on the same episodes, so not tested: other"
    everything = footnotes(build_report(store.root, mcnemar_scope="all", mcnemar_method="chi2_cc"))
    assert next(n for n in everything if n.startswith("* McNemar")).startswith(
        "* McNemar's chi-square test with continuity correction on per-episode outcomes against the FP baseline "
        "(fp) at every column, Holm-adjusted within this table's family of 2 tests")
    # two models, each with its FP: each run against its own model's
    store = _loose(tmp_path / "b", {"fp": ({"method": "fp"}, series), "fp2": ({"method": "fp", "model_name": "wall_seed2"}, series),
                                    "rtn": (RTN44, series)})
    notes = footnotes(build_report(store.root))
    assert "against the FP baseline of the run's own model (fp, fp2)" in next(n for n in notes if n.startswith("* McNemar"))
    assert not any(n.startswith("Without an FP baseline") for n in notes)
    # no FP run at all
    notes = footnotes(build_report(_loose(tmp_path / "c", {"rtn": (RTN44, series)}).root))
    assert "No FP baseline result: no McNemar tests against FP." in notes
    assert not any(n.startswith(("* McNemar", "Smallest detectable", "Without an FP")) for n in notes)


def test_the_paper_table_note_and_the_status_of_unfinished_runs(tmp_path):
    store = _sweep(tmp_path / "sweep")
    report = build_report(store.root)
    assert footnotes(report)[1] == "Cells: success rate [Wilson 95% interval] (paper Table 3)."
    header, body = main_table(report)
    assert header[-3:] == ["\u0394 vs FP [95%]", "Run", "Status"]
    assert header[5:5 + len(report.columns)] == [f"{k} iters" for k in report.columns]
    status = {line[-2]: line[-1] for line in body}
    assert status[report.rows[0].run_id] == "n=6"
    corrupt = report.corrupt[0].path.parent.name
    assert status[corrupt].startswith("corrupt: not valid JSON")
    assert sum(value == "pending" for value in status.values()) == len(report.rows) - 4
    store.record_failure(report.rows[-2].run_id, "CUDA out of memory")
    failed = main_table(build_report(store.root))[1][-2]
    assert failed[-1] == "failed: CUDA out of memory"


def test_a_holm_p_equal_to_alpha_is_not_starred(tmp_path):
    series = [[1, 1, 0, 0]] * 2
    store = _loose(tmp_path / "a", {"fp": ({"method": "fp"}, series), "rtn": (RTN44, series),
                                    "omse": (dict(RTN44, method="omse"), series)})
    report = build_report(store.root)
    row = report.rows[-1]
    row.cells[2] = Cell(2, 4, 0.1, 0.9, p_vs_fp=0.05, p_holm=0.05)
    assert cell_text(report, row, 2).startswith("0.50 [")
    row.cells[2].p_holm = 0.0499
    assert cell_text(report, row, 2).startswith("0.50* [")
    report.comparisons[0].p_holm = 0.05
    assert comparison_table(report)[1][0][-1] == ""
    report.comparisons[0].p_holm = 0.0499
    assert comparison_table(report)[1][0][-1] == "*"


def test_the_setting_text_of_formats_and_group_counts():
    assert groups_per_row_text(None) == "" and groups_per_row_text({"quant": None}) == ""
    summary = {"encoder": {"groups_per_row": {"min": 2, "max": 2}}, "predictor": {"groups_per_row": {"min": 1, "max": 3}}}
    assert groups_per_row_text({"quant": {"summary": summary}}) == " (enc 2, pred 1-3/row)"
    assert groups_per_row_text({"quant": {"summary": {"predictor": summary["predictor"]}}}) == " (pred 1-3/row)"
    report = Report(
        title="t", description="", env="wall", columns=[0], rows=[], baseline=None, comparisons=[], corrupt=[],
        paper_table=None, alpha=0.05, mcnemar_scope="final", mcnemar_method="exact", unpaired=[])
    key = SettingKey("rtn", 4, 4, 4, 4, None, "per_token", "mxfp4")
    assert setting_values(report, key) == ["RTN MXFP4", "4", "4", "\u2013", "per-token"]
    grouped = SettingKey("rtn", 4, 16, 4, 16, 32, None)
    assert setting_values(report, grouped, result={"quant": {"summary": summary}}) == [
        "RTN", "4", "32", "32 (enc 2, pred 1-3/row)", "\u2013"]


def test_report_files_order_their_figures_and_give_the_curves_the_paper_numbers(tmp_path, monkeypatch):
    store = _sweep(tmp_path / "sweep")
    (store.root / "figures").mkdir()
    for name in ("a_rollouts", "z_outliers"):
        (store.root / "figures" / f"{name}.png").write_bytes(b"\x89PNG extra")
    seen = {}
    real_plot = report_module.plot_success_curves

    def recording_plot(results, path, paper=None):
        seen["paper"] = paper
        return real_plot(results, path, paper=paper)

    monkeypatch.setattr(report_module, "plot_success_curves", recording_plot)
    paths = report_module.write_report(store.root)
    report = build_report(store.root)
    expected = {row.run_id: row.paper for row in report.rows if row.result is not None and row.paper}
    assert seen["paper"] == expected and len(expected) == 3  # only finished runs, each with Table 3's numbers
    figures = report_module.report_figures(paths["md"].parent)
    assert list(figures) == ["success_curves", "latent_mse_and_loss", "a_rollouts", "z_outliers"]
    assert paths["html"].read_text().endswith("</body></html>")
    md = paths["md"].read_text()
    assert md.index("(figures/success_curves.png)") < md.index("(figures/latent_mse_and_loss.png)") < md.index(
        "(figures/a_rollouts.png)")
