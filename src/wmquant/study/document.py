"""A study document: several sweeps' reports under one title, after the author's reading of the
results, whose numbers are computed from those reports (`wmquant report --document`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import StudyError
from ..io import write_text
from .prose import hand_written_fractions, render_prose
from .report import DEFAULT_MARGIN, Report, build_report, render_markdown, write_report_files
from .store import ResultStore

log = logging.getLogger("wmquant.study")


def write_study_document(sweep_dirs: Sequence[str | os.PathLike], document: str | os.PathLike,
                         title: str, preface: str = "", alpha: float = 0.05,
                         margin: float = DEFAULT_MARGIN) -> dict[str, Path]:
    """One Markdown document for several sweeps (a study note such as docs/study_wall.md).

    Each sweep's full report (Markdown, CSV, LaTeX, HTML, figures) goes to DOCUMENT_STEM/<spec>/,
    and the document holds, per sweep, its table with intervals and paper numbers, the paired
    tests and the figures, after `preface`: the author's reading of the results, a Markdown
    template whose numbers are `{{...}}` placeholders computed from the reports (see .prose).
    Returns {"document": path, <spec>: that sweep's report.md}.
    """
    document = Path(document)
    assets = document.with_suffix("")
    reports = study_reports(sweep_dirs, alpha=alpha, margin=margin)
    if preface.strip():  # a placeholder that cannot be computed fails before any file is written
        render_prose(preface, {name: report for name, (_, report) in reports.items()})
    written = {}
    figures = {}
    for name, (sweep_dir, report) in reports.items():
        paths = write_report_files(report, sweep_dir, assets / name)
        figures[name] = {k: v for k, v in paths.items() if k not in ("md", "csv", "tex", "html")}
        written[name] = paths["md"]
    write_text(document, study_document_text(reports, figures, document, title, preface))
    return {"document": document, **written}


def study_reports(sweep_dirs: Sequence[str | os.PathLike], alpha: float = 0.05,
                  margin: float = DEFAULT_MARGIN) -> dict[str, tuple[Path, Report]]:
    """spec name -> (sweep dir, its report), in the order given."""
    reports = {}
    for sweep_dir in sweep_dirs:
        name = (ResultStore(sweep_dir).read_sweep() or {}).get("spec") or Path(sweep_dir).name
        if name in reports:
            raise StudyError(f"two sweep directories hold spec {name!r}: {reports[name][0]} and {sweep_dir}")
        reports[name] = (Path(sweep_dir), build_report(sweep_dir, alpha=alpha, margin=margin))
    return reports


def study_document_text(reports: Mapping[str, tuple[Path, Report]], figures: Mapping[str, Mapping[str, Path]],
                        document: Path, title: str, preface: str = "") -> str:
    """The Markdown of a study document: the rendered preface, then each sweep's section."""
    parts = [f"# {title}", ""]
    if preface.strip():
        by_spec = {name: report for name, (_, report) in reports.items()}
        hand = hand_written_fractions(preface)
        if hand:
            log.warning("the preface writes %d decimal number(s) by hand (%s); use {{...}} placeholders",
                        len(hand), ", ".join(hand[:5]))
        parts += [render_prose(preface, by_spec).strip(), ""]
    assets = document.with_suffix("")
    for name, (_, report) in reports.items():
        links = " \u00b7 ".join(f"[{kind.upper()}]({os.path.relpath(assets / name / f'report.{kind}', document.parent)})"
                                for kind in ("html", "csv", "tex"))
        parts += [render_markdown(report, figures.get(name, {}), document.parent, level=2), f"Full report: {links}", ""]
    return "\n".join(parts)
