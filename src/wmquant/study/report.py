"""The study report of a sweep directory: Markdown, CSV, LaTeX and a self-contained HTML page.

One row per run, in the spec's order (the paper's row order for the shipped tables); one column per
"k iters" of the spec. Each cell is the success rate with its Wilson 95% interval and, for the
shipped tables, the paper's published number beside it. A quantized run whose episodes are the
FP baseline's (same eval_seeds) is compared with it by McNemar's exact test on the per-episode
outcomes; so are two methods at the same bit setting. Two families of tests are declared per
report: the tests against FP, and the method-vs-method tests; stars come from Holm-adjusted
p-values within each family (the raw p stays in the CSV). Against FP each row also gets the paired
difference with its 95% interval, and an equivalence verdict (TOST) for a stated margin.

Column k is entry max(k - 1, 0) of success_rate_by_iter: the success rate after MPC iteration
max(k, 1), so "0 iters" is the first MPC round.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import StudyError
from ..io import write_bytes, write_text
from .figures import plot_latent_mse_and_loss, plot_success_curves
from ..quant.recipes import display_name
from .paper import SettingKey, engine_variant, format_label, paper_bits, paper_table, setting_key_from_result
from .spec import setting_key_from_overrides
from .stats import (
    MCNEMAR_METHODS,
    equivalence_test,
    holm_adjust,
    mcnemar,
    paired_difference_interval,
    smallest_detectable_difference,
    wilson_interval,
)
from .store import CorruptResult, ResultStore

log = logging.getLogger("wmquant.study")

DEFAULT_COLUMNS = {"wall": (0, 5, 10, 20, 30, 40, 50), "pusht": (0, 5, 10, 20, 30)}
MCNEMAR_SCOPES = ("final", "all")
COLUMN_NOTE = ('Column "k iters" is the success rate after MPC iteration max(k, 1), i.e. entry max(k-1, 0) '
               'of success_rate_by_iter; "0 iters" is the first MPC round.')
BITS_NOTE = "Bit width 32 means not quantized (float), as in the paper; #G \u2013 means per output channel."
#: Equivalence margin of "no loss" claims: a run is equivalent to FP when the paired 90% interval of
#: its difference lies inside +-0.10 (TOST at alpha 0.05). 5 of 50 episodes.
DEFAULT_MARGIN = 0.10
EQUIVALENT_MARK = "\u2248"


def column_index(k: int) -> int:
    """Index into the per-iteration lists for the paper's "k iters" column."""
    return max(k - 1, 0)


@dataclass
class Cell:
    successes: int
    n: int
    lo: float
    hi: float
    p_vs_fp: float | None = None  # McNemar p-value against the FP baseline, where tested
    b: int | None = None          # episodes this run solved and FP did not
    c: int | None = None          # episodes FP solved and this run did not
    p_holm: float | None = None   # p_vs_fp adjusted by Holm within the report's tests against FP
    diff: float | None = None     # rate - FP's rate, on the same episodes
    diff_lo: float | None = None  # Newcombe 95% interval of the paired difference
    diff_hi: float | None = None
    equivalent: bool | None = None  # TOST within the report's margin

    @property
    def rate(self) -> float:
        return self.successes / self.n


@dataclass
class Row:
    run_id: str
    key: SettingKey
    result: Mapping[str, Any] | None  # None: planned, no valid result yet
    status: str                        # done | pending | failed | corrupt
    note: str = ""
    cells: dict[int, Cell] = field(default_factory=dict)
    paper: dict[int, float] = field(default_factory=dict)
    variant: str = ""                  # engine mode other than the exact default, e.g. "bf16", "real kernels"


@dataclass
class Comparison:
    """McNemar test between two runs at one bit setting (final common column)."""

    setting: str
    run_a: str
    method_a: str
    run_b: str
    method_b: str
    column: int
    rate_a: float
    rate_b: float
    b: int
    c: int
    p_value: float
    p_holm: float = 1.0
    variant_a: str = ""  # engine variants (Row.variant)
    variant_b: str = ""
    format_a: str = ""  # where the two runs differ in number format: each one's ("INT G32", "MXFP4");
    format_b: str = ""  # "" where they share it (then `setting` names it)
    diff_lo: float = 0.0  # Newcombe 95% interval of rate_a - rate_b, paired
    diff_hi: float = 0.0


@dataclass
class Report:
    title: str
    description: str
    env: str | None
    columns: list[int]
    rows: list[Row]
    baseline: Row | None
    comparisons: list[Comparison]
    corrupt: list[CorruptResult]
    paper_table: int | None
    alpha: float
    mcnemar_scope: str
    mcnemar_method: str
    unpaired: list[str]  # runs that could not be paired with the baseline
    margin: float = DEFAULT_MARGIN
    baselines: dict = field(default_factory=dict)  # model -> its FP baseline row (model replicates)

    def tested_cells(self) -> list[Cell]:
        return [cell for row in self.rows for cell in row.cells.values() if cell.p_vs_fp is not None]

    def detectable(self) -> tuple[float | None, float | None, int, int]:
        """(smallest detectable difference of one test, of the first Holm step of the FP family,
        the family's size, episodes per test): what this table can and cannot see."""
        tested = self.tested_cells()
        if not tested:
            return None, None, 0, 0
        n = min(cell.n for cell in tested)
        return (smallest_detectable_difference(n, self.alpha), smallest_detectable_difference(n, self.alpha, len(tested)),
                len(tested), n)

    @property
    def module_layout(self) -> bool:
        """Tables 7-8 layout: encoder and predictor bits in separate columns."""
        return any((r.key.enc_w, r.key.enc_a) != (r.key.pred_w, r.key.pred_a) for r in self.rows)


# ---------------------------------------------------------------------------------------------
# Building

def _paired(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a["eval_seeds"] == b["eval_seeds"]


def _outcomes(result: Mapping[str, Any], k: int) -> list[int] | None:
    series = result["success_by_iter"]
    index = column_index(k)
    return series[index] if index < len(series) else None


def _report_columns(spec_columns: Sequence[int], results: Sequence[Mapping[str, Any]]) -> list[int]:
    """The spec's columns that some result reaches, plus the last iteration when a shorter
    budget (planner.max_iter) ends between two columns."""
    longest = max(len(r["success_by_iter"]) for r in results)
    columns = [k for k in spec_columns if column_index(k) < longest]
    if not columns or column_index(columns[-1]) < longest - 1:
        columns.append(longest)
    return columns


def _last_common_column(columns: Sequence[int], a: Mapping[str, Any], b: Mapping[str, Any]) -> int | None:
    common = [k for k in columns if _outcomes(a, k) is not None and _outcomes(b, k) is not None]
    return common[-1] if common else None


def build_report(sweep_dir: str | os.PathLike, alpha: float = 0.05, mcnemar_scope: str = "final",
                 mcnemar_method: str = "exact", margin: float = DEFAULT_MARGIN) -> Report:
    """Collect results, intervals, paper numbers, McNemar tests (Holm-adjusted within their
    family), paired differences and equivalence verdicts of a sweep directory."""
    if mcnemar_scope not in MCNEMAR_SCOPES:
        raise StudyError(f"unknown McNemar scope {mcnemar_scope!r}; valid: {', '.join(MCNEMAR_SCOPES)}")
    if mcnemar_method not in MCNEMAR_METHODS:
        raise StudyError(f"unknown McNemar method {mcnemar_method!r}; valid: {', '.join(MCNEMAR_METHODS)}")
    store = ResultStore(sweep_dir)
    if not store.root.is_dir():
        raise StudyError(f"sweep directory {store.root} does not exist")
    sweep = store.read_sweep() or {}
    results, corrupt = store.load_results()
    for bad in corrupt:
        log.warning("skipping corrupt result %s: %s", bad.path, bad.reason)
    if not results:
        detail = ""
        if corrupt:
            detail = f"; {len(corrupt)} corrupt result file(s): " + "; ".join(f"{p}: {r}" for p, r in corrupt)
        planned = len(sweep.get("runs", []))
        raise StudyError(f"no results in {store.root} ({planned} planned run(s), none complete{detail}); "
                         "run `wmquant sweep` into this directory first")
    env = sweep.get("env") or results[0]["env"]
    columns = _report_columns(sweep.get("columns") or DEFAULT_COLUMNS[env], results)  # results name a known env
    table = sweep.get("paper_table")
    published = paper_table(table) if table else {}
    rows = _rows(store, sweep, results, corrupt, columns, published)
    baselines = _baselines(rows)
    baseline = next(iter(baselines.values()), None)
    unpaired = _test_against_baseline(rows, baselines, columns, mcnemar_scope, mcnemar_method, alpha, margin)
    comparisons = _pairwise(rows, columns, mcnemar_method)
    report = Report(title=f"Study {sweep.get('spec', store.root.name)}", description=sweep.get("description", ""),
                    env=env, columns=columns, rows=rows, baseline=baseline, comparisons=comparisons,
                    corrupt=corrupt, paper_table=table, alpha=alpha, mcnemar_scope=mcnemar_scope,
                    mcnemar_method=mcnemar_method, unpaired=unpaired, margin=margin, baselines=baselines)
    tested = report.tested_cells()
    for cell, adjusted in zip(tested, holm_adjust([cell.p_vs_fp for cell in tested])):
        cell.p_holm = adjusted
    return report


def _rows(store: ResultStore, sweep: Mapping[str, Any], results: list[dict], corrupt: list[CorruptResult],
          columns: list[int], published: Mapping[SettingKey, dict[int, float]]) -> list[Row]:
    by_id = {r["run_id"]: r for r in results}
    corrupt_by_id = {c.path.parent.name: c.reason for c in corrupt}
    failures = store.failures(completed=set(by_id))
    planned = [(p["run_id"], p["overrides"]) for p in sweep.get("runs", [])]
    planned_ids = {run_id for run_id, _ in planned}
    order = planned + [(run_id, None) for run_id in sorted(by_id) if run_id not in planned_ids]
    rows = []
    for run_id, overrides in order:
        result = by_id.get(run_id)
        if result is not None:
            row = Row(run_id, setting_key_from_result(result), result, "done", variant=engine_variant(result))
            for k in columns:
                outcomes = _outcomes(result, k)
                if outcomes is not None:
                    successes = int(sum(outcomes))
                    row.cells[k] = Cell(successes, len(outcomes), *wilson_interval(successes, len(outcomes)))
        else:
            status = "corrupt" if run_id in corrupt_by_id else "failed" if run_id in failures else "pending"
            row = Row(run_id, setting_key_from_overrides(overrides), None, status,
                      note=corrupt_by_id.get(run_id) or failures.get(run_id) or store.checkpoint_note(run_id),
                      variant=engine_variant(overrides=overrides))
        row.paper = dict(published.get(row.key, {}))
        rows.append(row)
    return rows


def _model_of(row: Row) -> str | None:
    return (row.result or {}).get("model")


def replicate_of(row: Row) -> tuple[str | None, int]:
    """(model, calibration set) of a finished run: what a replicate changes."""
    config = (row.result or {}).get("config") or {}
    return _model_of(row), int(config.get("calib_seed_offset") or 0)


def replicate_label(row: Row) -> str:
    model, offset = replicate_of(row)
    return f"{model} cal{offset}"


@dataclass
class ReplicateGroup:
    """Runs of one configuration (method, bits, groups, activations, engine) that differ only in
    their model or calibration set."""

    label: str
    rows: list[Row]

    def finals(self) -> list[float]:
        return [row.result["success_rate_by_iter"][-1] for row in self.rows]


def replicate_groups(report: Report) -> list[ReplicateGroup]:
    groups: dict[tuple, list[Row]] = {}
    for row in report.rows:
        if row.result is not None:
            groups.setdefault((row.key, row.variant), []).append(row)
    return [ReplicateGroup(method_label(key.method, variant) + ("" if key.method == "fp" else f" {key.label()}"), rows)
            for (key, variant), rows in groups.items() if len({replicate_of(r) for r in rows}) > 1]


def replicate_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """One row per configuration with replicates: each replicate's final success, their mean,
    standard deviation and range, and in how many the difference to FP is significant (Holm) or
    shown equivalent."""
    header = ["Configuration", "n", "final success per replicate (model, calibration set)", "mean", "sd", "range",
              "* vs FP", f"{EQUIVALENT_MARK} FP"]
    body = []
    for group in replicate_groups(report):
        finals = group.finals()
        mean = sum(finals) / len(finals)
        sd = (sum((x - mean) ** 2 for x in finals) / (len(finals) - 1)) ** 0.5
        tested = [cell for row in group.rows if (cell := last_tested_cell(report, row)) is not None]
        body.append([group.label, str(len(finals)),
                     "; ".join(f"{replicate_label(row)} {value:.2f}" for row, value in zip(group.rows, finals)),
                     f"{mean:.2f}", f"{sd:.2f}", f"{min(finals):.2f}-{max(finals):.2f}",
                     f"{sum(_significant(report, c) for c in tested)}/{len(tested)}" if tested else "\u2013",
                     f"{sum(bool(c.equivalent) for c in tested)}/{len(tested)}" if tested else "\u2013"])
    return header, body


def last_tested_cell(report: Report, row: Row) -> Cell | None:
    """The row's cell at the last column tested against FP; None where it was not tested."""
    cells = [row.cells[k] for k in report.columns if k in row.cells and row.cells[k].p_vs_fp is not None]
    return cells[-1] if cells else None


def _baselines(rows: list[Row]) -> dict[str | None, Row]:
    """The FP baseline of each model in the sweep (its first exact FP run): a run is tested against
    the FP run of its own model (model replicates each have their own)."""
    found: dict[str | None, Row] = {}
    for row in rows:
        if row.result is not None and row.key.method == "fp" and not row.variant:
            found.setdefault(_model_of(row), row)
    return found


def _test_against_baseline(rows: list[Row], baselines: Mapping[str | None, Row], columns: list[int], scope: str,
                           method: str, alpha: float, margin: float) -> list[str]:
    unpaired = []
    for row in rows:
        baseline = baselines.get(_model_of(row))
        if row.result is None or row is baseline or not baselines:
            continue
        if baseline is None:
            unpaired.append(row.run_id)  # no FP run of its model in this sweep
            continue
        if not _paired(row.result, baseline.result):
            unpaired.append(row.run_id)
            continue
        final = _last_common_column(columns, row.result, baseline.result)
        for k in columns if scope == "all" else [final] if final is not None else []:
            ours, theirs = _outcomes(row.result, k), _outcomes(baseline.result, k)
            if ours is None or theirs is None:
                continue
            test = mcnemar(ours, theirs, method=method)
            cell = row.cells[k]
            cell.p_vs_fp, cell.b, cell.c = test["p_value"], test["b"], test["c"]
            cell.diff, cell.diff_lo, cell.diff_hi = paired_difference_interval(ours, theirs)
            cell.equivalent = equivalence_test(ours, theirs, margin, alpha)["equivalent"]
    return unpaired


def _comparable(first: Row, second: Row) -> bool:
    """Whether two runs at the same bits form a question of the study: they differ in at most one
    factor of the method, the engine variant and the number format (in none: two settings of one
    method's options). A format's own blocks stand in
    for a group size (INT4 G32 against MXFP4), so group sizes may differ only together with the
    format; two integer runs must share theirs. A pair differing in two factors (FP8 fake against
    INT8 real kernels) answers nothing and would only widen the Holm family."""
    a, b = first.key, second.key
    if a.group != b.group and a.fmt == b.fmt:
        return False
    return (a.method != b.method) + (a.fmt != b.fmt) + (first.variant != second.variant) <= 1


def _format_text(key: SettingKey, other: SettingKey) -> str:
    """One side's number format where the two differ in it ("" where not), with how its weights
    share scales where that differs too: "INT G32" against "MXFP4 blocks of 32"."""
    if key.fmt == other.fmt:
        return ""
    if key.grouping() == other.grouping():
        return format_label(key.fmt)
    return f"{format_label(key.fmt)} {key.grouping()}"


def _shared_label(a: SettingKey, b: SettingKey) -> str:
    """The setting two compared runs share: with their format when they share it."""
    return a._replace(fmt=a.fmt if a.fmt == b.fmt else "int").label(with_group=a.grouping() == b.grouping())


def _candidate_pairs(rows: list[Row]) -> list[tuple[Row, Row]]:
    """Pairs of runs at the same bits, on one model with one calibration set (never across
    replicates): first those that share the group size, setting by setting, then those whose
    number formats differ in their grouping (INT4 G32 against MXFP4)."""
    same_group: dict[tuple, list[Row]] = {}
    same_bits: dict[tuple, list[Row]] = {}
    for row in rows:
        if row.result is not None and row.key.method != "fp":
            same_group.setdefault((row.key.setting, replicate_of(row)), []).append(row)
            bits_and_granularity = row.key.setting[:4] + row.key.setting[5:]
            same_bits.setdefault((bits_and_granularity, replicate_of(row)), []).append(row)
    pairs = [pair for members in same_group.values() for pair in itertools.combinations(members, 2)]
    pairs += [(a, b) for members in same_bits.values() for a, b in itertools.combinations(members, 2)
              if a.key.group != b.key.group]
    return pairs


def _pairwise(rows: list[Row], columns: list[int], method: str) -> list[Comparison]:
    comparisons = []
    for first, second in _candidate_pairs(rows):
        if not _comparable(first, second) or not _paired(first.result, second.result):
            continue
        k = _last_common_column(columns, first.result, second.result)
        if k is None:
            continue
        a, b = _outcomes(first.result, k), _outcomes(second.result, k)
        test = mcnemar(a, b, method=method)
        _, lo, hi = paired_difference_interval(a, b)
        comparisons.append(Comparison(_shared_label(first.key, second.key), first.run_id, first.key.method,
                                      second.run_id, second.key.method, k, sum(a) / len(a), sum(b) / len(b),
                                      test["b"], test["c"], test["p_value"],
                                      variant_a=first.variant, variant_b=second.variant, diff_lo=lo, diff_hi=hi,
                                      format_a=_format_text(first.key, second.key),
                                      format_b=_format_text(second.key, first.key)))
    for comparison, adjusted in zip(comparisons, holm_adjust([c.p_value for c in comparisons])):
        comparison.p_holm = adjusted
    return comparisons


# ---------------------------------------------------------------------------------------------
# Text of cells and setting columns (shared by every format)

def setting_columns(report: Report) -> list[str]:
    if report.module_layout:
        return ["Method", "#W_Enc", "#A_Enc", "#W_Pred", "#A_Pred", "#G", "AQG"]
    return ["Method", "#W", "#A", "#G", "AQG"]


def method_label(method: str, variant: str = "") -> str:
    """The method's name as the registry prints it (the paper's names), with the engine variant
    if any: "RTN (real kernels)", "SmoothQuant+GPTQ"."""
    if not variant:
        return display_name(method)
    # "FP32 (bf16)" would contradict itself: the float model in another precision is "FP (bf16)"
    return f"{'FP' if method == 'fp' else display_name(method)} ({variant})"


def groups_per_row_text(result: Mapping[str, Any] | None) -> str:
    """" (enc 2, pred 1/row)": weight groups per row that a group size gave each part, from the
    run's quantization summary; "" where the result does not record it (runs before it did)."""
    summary = ((result or {}).get("quant") or {}).get("summary") or {}
    parts = []
    for part, short in (("encoder", "enc"), ("predictor", "pred")):
        groups = (summary.get(part) or {}).get("groups_per_row")
        if groups:
            span = str(groups["min"]) if groups["min"] == groups["max"] else f"{groups['min']}-{groups['max']}"
            parts.append(f"{short} {span}")
    return f" ({', '.join(parts)}/row)" if parts else ""


def setting_values(report: Report, key: SettingKey, variant: str = "", result: Mapping[str, Any] | None = None) -> list[str]:
    method = method_label(key.method, variant) + (f" {format_label(key.fmt)}" if key.fmt != "int" else "")
    group = f"{key.group}{groups_per_row_text(result)}" if key.group else "\u2013"
    aqg = key.aqg.replace("_", "-") if key.aqg else "\u2013"
    if report.module_layout:
        bits = [paper_bits(b) for b in (key.enc_w, key.enc_a, key.pred_w, key.pred_a)]
        return [method, *bits, group, aqg]
    return [method, paper_bits(key.pred_w), paper_bits(key.pred_a), group, aqg]


def _significant(report: Report, cell: Cell | None) -> bool:
    """Starred: Holm-adjusted p within the report's family of tests against FP below alpha."""
    return cell is not None and cell.p_holm is not None and cell.p_holm < report.alpha


def signed(x: float) -> str:
    return f"{x:+.2f}".replace("+0.00", "0.00").replace("-0.00", "0.00")


def difference_text(report: Report, row: Row) -> str:
    """The paired difference to FP at the last tested column: "-0.20 [-0.33, -0.08]", with the
    equivalence mark when it is within the margin; "" when the row was not tested."""
    cell = last_tested_cell(report, row)
    if cell is None:
        return ""
    mark = f" {EQUIVALENT_MARK}" if cell.equivalent else ""
    return f"{signed(cell.diff)} [{signed(cell.diff_lo)}, {signed(cell.diff_hi)}]{mark}"


def cell_text(report: Report, row: Row, k: int) -> str:
    """ "0.94* [0.84, 0.98] (0.94)": ours, mark, Wilson interval, (paper)."""
    cell = row.cells.get(k)
    paper = f" ({row.paper[k]:.2f})" if k in row.paper else ""
    if cell is None:
        return f"\u2014{paper}"
    mark = "*" if _significant(report, cell) else ""
    return f"{cell.rate:.2f}{mark} [{cell.lo:.2f}, {cell.hi:.2f}]{paper}"


def _status_text(row: Row) -> str:
    if row.status == "done":
        return f"n={row.result['n_evals']}"
    return row.status + (f": {row.note}" if row.note else "")


def footnotes(report: Report) -> list[str]:
    paper = (f" (paper Table {report.paper_table})." if report.paper_table
             else "; this spec names no paper table.")
    notes = [COLUMN_NOTE, "Cells: success rate [Wilson 95% interval]" + paper, BITS_NOTE]
    if report.baseline is None:
        notes.append("No FP baseline result: no McNemar tests against FP.")
    else:
        where = "the last column both runs reach" if report.mcnemar_scope == "final" else "every column"
        test = ("exact test" if report.mcnemar_method == "exact"
                else "chi-square test with continuity correction")
        single, family, size, n = report.detectable()
        fp_runs = ", ".join(row.run_id for row in report.baselines.values()) or report.baseline.run_id
        whose = "the FP baseline" if len(report.baselines) <= 1 else "the FP baseline of the run's own model"
        notes.append(f"* McNemar's {test} on per-episode outcomes against {whose} "
                     f"({fp_runs}) at {where}, Holm-adjusted within this table's family of "
                     f"{size} tests against FP: adjusted p < {report.alpha} (raw and adjusted p in the CSV). "
                     "Only runs evaluated on the same episodes (eval_seeds) are tested.")
        notes.append(f"\u0394 vs FP: success minus FP's on the same episodes at the last tested column, with "
                     f"Newcombe's paired 95% interval. {EQUIVALENT_MARK}: equivalent to FP within "
                     f"\u00b1{report.margin:.2f} (two one-sided tests at {report.alpha}: the paired "
                     f"{1 - 2 * report.alpha:.0%} interval lies inside the margin). Without {EQUIVALENT_MARK}, "
                     "a missing star does not mean no loss.")
        if size:
            notes.append(f"Smallest detectable difference: with {n} paired episodes the exact test cannot call any "
                         f"difference below {_detectable_text(single)} significant, and after Holm over {size} "
                         f"tests none below {_detectable_text(family)}.")
    if report.unpaired:
        notes.append("Without an FP baseline of the same model on the same episodes, so not tested: "
                     + ", ".join(report.unpaired))
    return notes


def _detectable_text(value: float | None) -> str:
    return "any" if value is None else f"{value:.2f}"


def main_table(report: Report) -> tuple[list[str], list[list[str]]]:
    header = (setting_columns(report) + [f"{k} iters" for k in report.columns] + ["\u0394 vs FP [95%]"]
              + ["Run", "Status"])
    body = [setting_values(report, row.key, row.variant, row.result) + [cell_text(report, row, k) for k in report.columns]
            + [difference_text(report, row), row.run_id, _status_text(row)] for row in report.rows]
    return header, body


def comparison_table(report: Report) -> tuple[list[str], list[list[str]]]:
    header = ["Setting", "A", "B", "iters", "success A", "success B", "A - B [95%]", "A only", "B only", "p",
              "p (Holm)", ""]
    def side(method: str, variant: str, fmt: str) -> str:
        return f"{method_label(method, variant)} {fmt}".rstrip()

    body = [[c.setting, side(c.method_a, c.variant_a, c.format_a), side(c.method_b, c.variant_b, c.format_b),
             str(c.column), f"{c.rate_a:.2f}", f"{c.rate_b:.2f}",
             f"{signed(c.rate_a - c.rate_b)} [{signed(c.diff_lo)}, {signed(c.diff_hi)}]", str(c.b), str(c.c),
             f"{c.p_value:.3g}", f"{c.p_holm:.3g}", "*" if c.p_holm < report.alpha else ""] for c in report.comparisons]
    return header, body


# ---------------------------------------------------------------------------------------------
# Formats

def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _corrupt_lines(report: Report) -> list[str]:
    lines = [f"- `{p}`: {reason}" for p, reason in report.corrupt]
    return lines


def timing_text(report: Report) -> str:
    """Runs complete, their summed wall time (calibration + planning) and where they ran."""
    done = [row.result for row in report.rows if row.result is not None]
    seconds = sum(float(r["wall_seconds"]) for r in done)  # required by the result schema
    devices = sorted({str(r["device"]) for r in done if r.get("device")})
    where = f" on {', '.join(devices)}" if devices else ""
    return (f"Environment: {report.env}. Runs: {len(done)} complete of {len(report.rows)}; "
            f"their wall time {seconds / 60:.1f} min in all{where}.")


def render_markdown(report: Report, figures: Mapping[str, Path], relative_to: Path, level: int = 1) -> str:
    """The report as Markdown; `level` is the heading level of its title (2 inside a study document)."""
    sub = "#" * (level + 1)
    parts = [f"{'#' * level} {report.title}", ""]
    if report.description:
        parts += [report.description, ""]
    parts += [timing_text(report), "", _md_table(*main_table(report)), ""]
    parts += ["- " + note.replace("*", "\\*") for note in footnotes(report)] + [""]
    if report.corrupt:
        parts += [f"{sub} Corrupt result files (excluded)", ""] + _corrupt_lines(report) + [""]
    replicates = replicate_table(report)
    if replicates[1]:
        parts += [f"{sub} Replicates", "", _md_table(*replicates), "",
                  "Replicates differ in their trained model or their calibration set (calib_seed_offset); "
                  "sd is the sample standard deviation of the final success over them. * vs FP: replicates whose "
                  "difference to their model's FP is significant after Holm; "
                  f"{EQUIVALENT_MARK} FP: replicates shown equivalent to it.", ""]
    parts += [f"{sub} Methods compared at the same setting (McNemar, {report.mcnemar_method})", ""]
    if report.comparisons:
        parts += [_md_table(*comparison_table(report)), "",
                  f"A only / B only: episodes solved by one run and not the other. A - B: paired difference "
                  f"with Newcombe's 95% interval. * Holm-adjusted p < {report.alpha}, over the family of all "
                  f"{len(report.comparisons)} method-vs-method comparisons of this report (raw p beside it).", ""]
    else:
        parts += ["No two methods share a bit setting with paired episodes.", ""]
    parts += [f"{sub} Figures", ""]
    for name, path in figures.items():
        parts += [f"![{name}]({os.path.relpath(path, relative_to)})", ""]
    return "\n".join(parts)


def render_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["run_id", "status", "method", "enc_w", "enc_a", "pred_w", "pred_a", "group", "aqg", "n_evals"]
    for k in report.columns:
        header += [f"it{k}_success", f"it{k}_lo", f"it{k}_hi", f"it{k}_paper", f"it{k}_p_vs_fp", f"it{k}_p_holm",
                   f"it{k}_diff", f"it{k}_diff_lo", f"it{k}_diff_hi", f"it{k}_equivalent"]
    writer.writerow(header)
    for row in report.rows:
        key = row.key
        line = [row.run_id, row.status, key.method, key.enc_w, key.enc_a, key.pred_w, key.pred_a,
                key.group or "", key.aqg or "", row.result["n_evals"] if row.result else ""]
        for k in report.columns:
            cell = row.cells.get(k)
            line += ([f"{cell.rate:.4f}", f"{cell.lo:.4f}", f"{cell.hi:.4f}"] if cell else ["", "", ""])
            line += [f"{row.paper[k]:.2f}" if k in row.paper else ""]
            tested = cell is not None and cell.p_vs_fp is not None
            line += ([f"{cell.p_vs_fp:.4g}", f"{cell.p_holm:.4g}", f"{cell.diff:.4f}", f"{cell.diff_lo:.4f}",
                      f"{cell.diff_hi:.4f}", str(bool(cell.equivalent)).lower()] if tested else [""] * 6)
        writer.writerow(line)
    return buffer.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "\u2013": "--", "\u2014": "---"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_cell(report: Report, row: Row, k: int) -> str:
    cell = row.cells.get(k)
    paper = f" ({row.paper[k]:.2f})" if k in row.paper else ""
    if cell is None:
        return "---" + paper
    mark = "$^{*}$" if _significant(report, cell) else ""
    return f"{cell.rate:.2f}{mark} {{\\scriptsize [{cell.lo:.2f}, {cell.hi:.2f}]{paper}}}"


def render_latex(report: Report) -> str:
    settings = setting_columns(report)
    spec = "l" + "c" * (len(settings) - 1 + len(report.columns))
    header = " & ".join(latex_escape(h) for h in settings + [f"{k} iters" for k in report.columns])
    lines = ["% Requires \\usepackage{booktabs}.", "\\begin{table*}[t]", "\\centering", "\\scriptsize",
             f"\\caption{{{latex_escape(report.title)}: success rate [Wilson 95\\% interval] (paper). "
             f"{latex_escape(COLUMN_NOTE)} $^{{*}}$: McNemar p $<$ {report.alpha} against FP, Holm-adjusted "
             f"within the table.}}",
             f"\\begin{{tabular}}{{{spec}}}", "\\toprule", header + " \\\\", "\\midrule"]
    for row in report.rows:
        values = [latex_escape(v) for v in setting_values(report, row.key, row.variant, row.result)]
        lines.append(" & ".join(values + [_latex_cell(report, row, k) for k in report.columns]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table*}", ""]
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: center; white-space: nowrap; }
th { background: #f0f0f0; }
td.sig { font-weight: bold; background: #fff3d6; }
td.missing { color: #999; }
span.ci { color: #666; font-size: 11px; }
span.paper { color: #1f5fa8; font-size: 11px; }
p.note { font-size: 12px; color: #444; margin: 0.2em 0; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
"""


def _html_table(header: Sequence[str], body_html: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body_html)}</tbody></table>"


def _html_cell(report: Report, row: Row, k: int) -> str:
    cell = row.cells.get(k)
    paper = f' <span class="paper">({row.paper[k]:.2f})</span>' if k in row.paper else ""
    if cell is None:
        return f'<td class="missing">\u2014{paper}</td>'
    title = ""
    if cell.p_vs_fp is not None:
        title = (f' title="McNemar vs FP: p={cell.p_vs_fp:.3g} (Holm {cell.p_holm:.3g}), only this run {cell.b}, '
                 f'only FP {cell.c}; difference {signed(cell.diff)} [{signed(cell.diff_lo)}, {signed(cell.diff_hi)}]"')
    sig = _significant(report, cell)
    css = ' class="sig"' if sig else ""
    return (f"<td{css}{title}>{cell.rate:.2f}{'*' if sig else ''} "
            f'<span class="ci">[{cell.lo:.2f}, {cell.hi:.2f}]</span>{paper}</td>')


def render_html(report: Report, figures: Mapping[str, bytes]) -> str:
    """One HTML page with every figure inlined as base64 PNG: no external asset, opens offline."""
    header, _ = main_table(report)
    rows_html = []
    for row in report.rows:
        cells = "".join(f"<td>{html.escape(v)}</td>" for v in setting_values(report, row.key, row.variant, row.result))
        cells += "".join(_html_cell(report, row, k) for k in report.columns)
        cells += f"<td>{html.escape(difference_text(report, row))}</td>"
        cells += f"<td><code>{html.escape(row.run_id)}</code></td><td>{html.escape(_status_text(row))}</td>"
        rows_html.append(f"<tr>{cells}</tr>")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1>"]
    if report.description:
        parts.append(f"<p>{html.escape(report.description)}</p>")
    parts.append(_html_table(header, rows_html))
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in footnotes(report)]
    if report.corrupt:
        parts.append("<h2>Corrupt result files (excluded)</h2><ul>")
        parts += [f"<li><code>{html.escape(str(p))}</code>: {html.escape(reason)}</li>" for p, reason in report.corrupt]
        parts.append("</ul>")
    parts.append(f"<h2>Methods compared at the same setting (McNemar, {report.mcnemar_method})</h2>")
    comp_header, comp_body = comparison_table(report)
    if comp_body:
        parts.append(_html_table(comp_header, ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>"
                                               for line in comp_body]))
    else:
        parts.append("<p>No two methods share a bit setting with paired episodes.</p>")
    parts.append("<h2>Figures</h2>")
    for name, png in figures.items():
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">'
                     f"<figcaption>{html.escape(name)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------

def write_report(sweep_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, alpha: float = 0.05,
                 mcnemar_scope: str = "final", mcnemar_method: str = "exact",
                 margin: float = DEFAULT_MARGIN) -> dict[str, Path]:
    """Write report.md, report.csv, report.tex, report.html and the figures (PNG) of a sweep.

    out_dir defaults to SWEEP_DIR/report. PNGs already in SWEEP_DIR/figures (e.g. rollout grids or
    activation outliers made by other commands) are embedded in the HTML page as well.
    mcnemar_scope: "final" (the last column both runs reach) or "all" columns, against FP.
    mcnemar_method: "exact" (binomial) or "chi2_cc".
    Returns {"md", "csv", "tex", "html", "success_curves", "latent_mse_and_loss"} -> path.
    Raises StudyError when the directory holds no valid result.
    """
    report = build_report(sweep_dir, alpha=alpha, mcnemar_scope=mcnemar_scope, mcnemar_method=mcnemar_method,
                          margin=margin)
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir) / "report"
    return write_report_files(report, sweep_dir, out)


REPORT_FIGURES = ("success_curves", "latent_mse_and_loss")


def write_report_files(report: Report, sweep_dir: str | os.PathLike, out: Path) -> dict[str, Path]:
    """The files of `write_report` for a report already built from `sweep_dir`."""
    results = [row.result for row in report.rows if row.result is not None]
    plot_success_curves(results, out / "figures" / "success_curves.png",
                        paper={row.run_id: row.paper for row in report.rows if row.result is not None and row.paper})
    plot_latent_mse_and_loss(results, out / "figures" / "latent_mse_and_loss.png")
    # Figures other commands left in the sweep (Fig. 1, Fig. 2) are copied next to the report, so
    # that the report directory stands alone (e.g. under docs/ while the sweep stays unpublished).
    for source in sorted((Path(sweep_dir) / "figures").glob("*.png")):
        copy = out / "figures" / source.name
        if copy.resolve() != source.resolve():
            write_bytes(copy, source.read_bytes())
    figures = report_figures(out)
    embedded = {name: path.read_bytes() for name, path in figures.items()}
    paths = {"md": out / "report.md", "csv": out / "report.csv", "tex": out / "report.tex", "html": out / "report.html"}
    write_text(paths["md"], render_markdown(report, figures, out))
    write_text(paths["csv"], render_csv(report))
    write_text(paths["tex"], render_latex(report))
    write_text(paths["html"], render_html(report, embedded))
    return {**paths, **figures}


def report_figures(out: Path) -> dict[str, Path]:
    """The figures of a report directory, name -> path: the report's own plots first, then every
    other PNG in its figures/ (copied from the sweep, or written there by other commands: a
    published study's Fig. 2 is made from run files that are not published, and stays part of the
    report when the report is rebuilt), by name."""
    folder = out / "figures"
    figures = {name: folder / f"{name}.png" for name in REPORT_FIGURES if (folder / f"{name}.png").is_file()}
    for path in sorted(folder.glob("*.png")):
        figures.setdefault(path.stem, path)
    return figures
