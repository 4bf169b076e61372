"""Generated prose: the numbers in a study document's text, computed from its results.

A study document's reading of the results (docs/study_wall.preface.md) is a Markdown template.
Every number in it is a placeholder `{{function argument ...}}` that is replaced by a value computed
from the sweeps' reports, so that the text cannot drift from the results it describes. Runs are
named `SPEC/RUN`, where RUN is a run id without its hash suffix, a glob over such ids
(`table3/*_w6a6_*`), or a whole run id (to tell apart engine variants of one configuration).

Functions (k: a report column, "k iters"; the last column when omitted):

    rate RUN [k]       success rate                       0.14
    cell RUN [k]       success rate and its star           0.14*
    ci RUN [k]         Wilson 95% interval                 [0.06, 0.26]
    diff RUN           paired difference to FP [95%]       -0.84 [-0.93, -0.72]
    p RUN / pholm RUN  McNemar p against FP, raw / Holm within the table's family
    only RUN / onlyfp RUN   episodes solved by the run and not FP / by FP and not the run
    pvs RUN RUN        McNemar p of two runs at their last common column; the document's `pvs`
                       placeholders form one family, and `pvs_holm` gives the Holm-adjusted p
    loss RUN k         planning loss after MPC iteration k (1-based)
    lossratio RUN      final planning loss / FP's final planning loss
    agree_from RUN RUN first MPC iteration from which the two runs' per-episode outcomes agree
    span FUNC RUN...   "lo-hi" of FUNC over every matched run (FUNC: rate, first, paper, lossratio, p)
    count RUN...       how many complete runs match
    equivalent RUN...  how many of them are equivalent to FP (TOST within the report's margin)
    paper RUN [k]      the paper's number for the run's row
    margin SPEC        the report's equivalence margin
    pvs_family         how many distinct `pvs` comparisons the document makes
    pvs_survivors      those whose Holm-adjusted p is below 0.05, listed
    first RUN          success rate after the first MPC iteration
    mdd SPEC [holm]    the smallest difference the table's test can detect (Holm: first step)
    wilson K N         the Wilson 95% interval of K successes out of N
    runs SPEC          complete runs of a sweep
    resumed SPEC...    runs that resumed from a checkpoint after their device call ended
    seconds RUN        the run's wall time (calibration and planning), in seconds
    calib RUN          its calibration time (planning passes and the method), in seconds
    bits RUN PART      average bits per weight of PART (encoder, predictor)

`span` and `count` take filters after the runs: `final>=0.92`, `final<0.5`.
"""

from __future__ import annotations

import fnmatch
import operator
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from ..errors import StudyError
from .report import Report, Row, last_tested_cell, signed
from .stats import holm_adjust, mcnemar, wilson_interval

PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_FILTER = re.compile(r"^final(>=|<=|>|<|==)([0-9.]+)$")
_COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


def run_name(run_id: str) -> str:
    """A run id without its hash suffix: `rtn_w4a4_gpc_pt-16436816` -> `rtn_w4a4_gpc_pt`."""
    stem, _, suffix = run_id.rpartition("-")
    return stem if stem and re.fullmatch(r"[0-9a-f]{8}", suffix) else run_id


def format_p(p: float) -> str:
    """A p-value as text: two significant digits, scientific below 1e-4."""
    if p >= 0.9995:
        return "1"
    if p < 1e-4:
        mantissa, exponent = f"{p:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{p:.2g}"


def _span(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    texts = [fmt(min(values)), fmt(max(values))]
    return texts[0] if texts[0] == texts[1] else f"{texts[0]}-{texts[1]}"


@dataclass
class ProseContext:
    reports: Mapping[str, Report]
    pair_holm: dict[tuple[str, str], float] = field(default_factory=dict)
    alpha: float = 0.05

    # -- resolving runs --------------------------------------------------------------------------
    def report(self, spec: str) -> Report:
        if spec not in self.reports:
            raise StudyError(f"generated prose names sweep {spec!r}; the document has: {', '.join(sorted(self.reports))}")
        return self.reports[spec]

    def rows(self, ref: str) -> list[tuple[Report, Row]]:
        spec, sep, pattern = ref.partition("/")
        if not sep or not pattern:
            raise StudyError(f"generated prose: run reference {ref!r} is not SPEC/RUN (e.g. table3/rtn_w4a4_gpc_pt)")
        report = self.report(spec)
        found = [(report, row) for row in report.rows if row.result is not None
                 and (fnmatch.fnmatchcase(run_name(row.run_id), pattern) or row.run_id == pattern)]
        if not found:
            names = ", ".join(run_name(r.run_id) for r in report.rows if r.result is not None)
            raise StudyError(f"generated prose: no complete run of {spec} matches {pattern!r}; complete runs: {names}")
        return found

    def one(self, ref: str) -> tuple[Report, Row]:
        found = self.rows(ref)
        if len(found) != 1:
            raise StudyError(f"generated prose: {ref!r} matches {len(found)} runs "
                             f"({', '.join(run_name(r.run_id) for _, r in found)}); name exactly one")
        return found[0]

    # -- values ----------------------------------------------------------------------------------
    @staticmethod
    def column(report: Report, k: str | None) -> int:
        if k is None:
            return report.columns[-1]
        try:
            value = int(k)
        except ValueError:
            raise StudyError(f"generated prose: column {k!r} is not an integer") from None
        if value not in report.columns:
            raise StudyError(f"generated prose: column {value} is not in the report; columns: {report.columns}")
        return value

    def cell(self, ref: str, k: str | None = None):
        report, row = self.one(ref)
        cell = row.cells.get(self.column(report, k))
        if cell is None:
            raise StudyError(f"generated prose: {ref} has no result at column {k}")
        return report, row, cell

    def tested(self, ref: str):
        return self.tested_cell(*self.one(ref))

    @staticmethod
    def tested_cell(report: Report, row: Row):
        cell = last_tested_cell(report, row)
        if cell is None:
            raise StudyError(f"generated prose: {run_name(row.run_id)} was not tested against FP (FP itself, or other "
                             "episodes)")
        return cell

    @staticmethod
    def final_rate(row: Row) -> float:
        return row.result["success_rate_by_iter"][-1]

    @staticmethod
    def loss_at(row: Row, iteration: int) -> float:
        series = row.result["planning_loss_by_iter"]
        if not 1 <= iteration <= len(series):
            raise StudyError(f"generated prose: {row.run_id} has planning losses for iterations 1..{len(series)}, "
                             f"not {iteration}")
        return float(series[iteration - 1])

    def loss_ratio(self, report: Report, row: Row) -> float:
        if report.baseline is None:
            raise StudyError(f"generated prose: lossratio needs an FP baseline in {report.title}")
        fp = report.baseline.result["planning_loss_by_iter"][-1]
        return float(row.result["planning_loss_by_iter"][-1]) / float(fp)

    @staticmethod
    def common_outcomes(first: Row, second: Row) -> tuple[list[int], list[int], int]:
        if first.result["eval_seeds"] != second.result["eval_seeds"]:
            raise StudyError(f"generated prose: {first.run_id} and {second.run_id} were evaluated on different episodes")
        a, b = first.result["success_by_iter"], second.result["success_by_iter"]
        last = min(len(a), len(b)) - 1
        return a[last], b[last], last + 1

    def pair_p(self, first: str, second: str) -> float:
        _, a = self.one(first)
        _, b = self.one(second)
        x, y, _ = self.common_outcomes(a, b)
        return mcnemar(x, y)["p_value"]

    def filtered(self, args: Sequence[str]) -> list[tuple[Report, Row]]:
        refs = [a for a in args if not _FILTER.match(a)]
        filters = [_FILTER.match(a) for a in args if _FILTER.match(a)]
        if not refs:
            raise StudyError("generated prose: span/count need at least one SPEC/RUN")
        found: list[tuple[Report, Row]] = []
        for ref in refs:
            for pair in self.rows(ref):
                # a run shared by several tables (the FP baseline) counts once
                if all(pair[1].run_id != other.run_id for _, other in found):
                    found.append(pair)
        for match in filters:
            compare, threshold = _COMPARE[match.group(1)], float(match.group(2))
            found = [(rep, row) for rep, row in found if compare(round(self.final_rate(row), 6), threshold)]
        if not found:
            raise StudyError(f"generated prose: no complete run matches {' '.join(args)}")
        return found


def _rate(x: float) -> str:
    return f"{x:.2f}"


def _evaluate(ctx: ProseContext, words: list[str]) -> str:
    name, args = words[0], words[1:]

    def need(count: int, upto: int | None = None) -> None:
        if not count <= len(args) <= (upto if upto is not None else count):
            raise StudyError(f"generated prose: {{{{{' '.join(words)}}}}} takes {count}"
                             f"{'' if upto in (None, count) else f'-{upto}'} argument(s)")

    if name in ("rate", "cell", "ci"):
        need(1, 2)
        report, _, cell = ctx.cell(*args)
        if name == "rate":
            return _rate(cell.rate)
        if name == "ci":
            return f"[{cell.lo:.2f}, {cell.hi:.2f}]"
        star = "*" if cell.p_holm is not None and cell.p_holm < report.alpha else ""
        return f"{cell.rate:.2f}{star}"
    if name == "paper":
        need(1, 2)
        report, row = ctx.one(args[0])
        k = ctx.column(report, args[1] if len(args) == 2 else None)
        if k not in row.paper:
            raise StudyError(f"generated prose: the paper has no number for {args[0]} at column {k}")
        return _rate(row.paper[k])
    if name == "margin":
        need(1)
        return f"{ctx.report(args[0]).margin:.2f}"
    if name == "equivalent":
        return str(sum(1 for report, row in ctx.filtered(args)
                       if (cell := last_tested_cell(report, row)) is not None and cell.equivalent))
    if name == "pvs_family":
        need(0)
        return str(len(ctx.pair_holm))
    if name == "pvs_survivors":
        need(0)
        kept = [f"{a} against {b} ({format_p(p)})" for (a, b), p in ctx.pair_holm.items() if p < ctx.alpha]
        return "none" if not kept else "; ".join(kept)
    if name == "first":
        need(1)
        return _rate(ctx.one(args[0])[1].result["success_rate_by_iter"][0])
    if name in ("p", "pholm", "only", "onlyfp", "diff"):
        need(1)
        cell = ctx.tested(args[0])
        if name == "diff":
            return f"{signed(cell.diff)} [{signed(cell.diff_lo)}, {signed(cell.diff_hi)}]"
        return {"p": lambda: format_p(cell.p_vs_fp), "pholm": lambda: format_p(cell.p_holm),
                "only": lambda: str(cell.b), "onlyfp": lambda: str(cell.c)}[name]()
    if name in ("pvs", "pvs_holm"):
        need(2)
        if name == "pvs":
            return format_p(ctx.pair_p(*args))
        return format_p(ctx.pair_holm[(args[0], args[1])])
    if name == "loss":
        need(2)
        return f"{ctx.loss_at(ctx.one(args[0])[1], int(args[1])):#.2g}"  # keeps a trailing zero: 0.040
    if name == "lossratio":
        need(1)
        return f"{ctx.loss_ratio(*ctx.one(args[0])):.1f}"
    if name == "agree_from":
        need(2)
        (_, a), (_, b) = ctx.one(args[0]), ctx.one(args[1])
        ctx.common_outcomes(a, b)
        series_a, series_b = a.result["success_by_iter"], b.result["success_by_iter"]
        last = min(len(series_a), len(series_b))
        start = last
        while start > 0 and series_a[start - 1] == series_b[start - 1]:
            start -= 1
        return str(start + 1) if start < last else "never"
    if name == "span":
        if not args:
            raise StudyError("generated prose: span needs a function and runs")
        what, rest = args[0], args[1:]
        found = ctx.filtered(rest)
        if what == "rate":
            return _span([ctx.final_rate(row) for _, row in found], _rate)
        if what == "first":
            return _span([row.result["success_rate_by_iter"][0] for _, row in found], _rate)
        if what == "paper":
            values = [row.paper[max(row.paper)] for _, row in found if row.paper]
            if not values:
                raise StudyError(f"generated prose: the paper has no numbers for {' '.join(rest)}")
            return _span(values, _rate)
        if what == "lossratio":
            return _span([ctx.loss_ratio(rep, row) for rep, row in found], lambda x: f"{x:.1f}")
        if what == "p":
            return _span([ctx.tested_cell(rep, row).p_vs_fp for rep, row in found], format_p)
        raise StudyError(f"generated prose: span of {what!r} is unknown; valid: rate, first, paper, lossratio, p")
    if name == "count":
        return str(len(ctx.filtered(args)))
    if name == "mdd":
        need(1, 2)
        report = ctx.report(args[0])
        single, family, _, _ = report.detectable()
        value = family if len(args) == 2 and args[1] == "holm" else single
        return "none" if value is None else _rate(value)
    if name == "wilson":
        need(2)
        lo, hi = wilson_interval(int(args[0]), int(args[1]))
        return f"[{lo:.2f}, {hi:.2f}]"
    if name == "runs":
        need(1)
        return str(sum(1 for row in ctx.report(args[0]).rows if row.result is not None))
    if name == "resumed":
        return str(sum(1 for spec in args for row in ctx.report(spec).rows if row.result and row.result.get("resumed")))
    if name == "seconds":
        need(1)
        return f"{float(ctx.one(args[0])[1].result['wall_seconds']):.1f}"
    if name == "calib":
        need(1)
        quant = ctx.one(args[0])[1].result.get("quant") or {}
        return "\u2013" if "calibration_seconds" not in quant else f"{float(quant['calibration_seconds']):.1f}"
    if name == "bits":
        need(2)
        quant = ctx.one(args[0])[1].result.get("quant") or {}
        value = (quant.get("avg_bits_per_weight") or {}).get(args[1])
        return "32" if value is None else f"{float(value):.2f}"
    raise StudyError(f"generated prose: unknown function {name!r} in {{{{{' '.join(words)}}}}}; valid: " + ", ".join(FUNCTIONS))


FUNCTIONS = ("agree_from", "bits", "calib", "cell", "ci", "count", "diff", "equivalent", "first", "loss", "lossratio",
             "margin", "mdd", "only", "onlyfp", "p", "paper", "pholm", "pvs", "pvs_family", "pvs_holm", "pvs_survivors",
             "rate", "resumed", "runs", "seconds", "span", "wilson")


def render_prose(template: str, reports: Mapping[str, Report]) -> str:
    """Replace every `{{...}}` of `template` by its value computed from `reports` (spec -> Report).
    The `pvs` placeholders of the whole template are one family for `pvs_holm`. HTML comments
    (notes for the template's authors) are dropped."""
    template = _COMMENT.sub("", template).lstrip("\n")  # notes to the template's authors, not readers
    ctx = ProseContext(reports)
    calls = [match.group(1).split() for match in PLACEHOLDER.finditer(template)]
    pair_keys = list(dict.fromkeys((w[1], w[2]) for w in calls if w and w[0] in ("pvs", "pvs_holm") and len(w) == 3))
    raw = [ctx.pair_p(a, b) for a, b in pair_keys]
    ctx.pair_holm = dict(zip(pair_keys, holm_adjust(raw)))
    return PLACEHOLDER.sub(lambda match: _evaluate(ctx, match.group(1).split()), template)


#: A decimal number written by hand. Integers stay allowed: bit settings (W4A4, G128), table and
#: insight numbers, and the protocol's sizes (50 episodes) are settings, not results.
HAND_NUMBER = re.compile(r"(?<![\w.])\d+\.\d+")
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def hand_written_fractions(template: str) -> list[str]:
    """Decimal numbers in `template` outside placeholders and code (each one a result typed by hand)."""
    return HAND_NUMBER.findall(_CODE.sub("", PLACEHOLDER.sub("", template)))


def check_no_hand_numbers(template: str) -> None:
    found = hand_written_fractions(template)
    if found:
        raise StudyError(f"generated prose: the template writes {len(found)} number(s) by hand ({', '.join(found[:5])}); "
                         "put each in a {{...}} placeholder computed from the results")
