"""`wmquant sweep`, `wmquant runs list` and `wmquant report`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import ConfigError


def sweep_command(config_name: str | None, overrides: Sequence[str]) -> int:
    from ..study.sweep import parse_sweep_args, run_sweep

    if config_name is not None:
        raise ConfigError("wmquant sweep takes study=NAME, not --config-name (e.g. `wmquant sweep study=table1 model_name=wall`)")
    args = parse_sweep_args(overrides)
    summary = run_sweep(args.study, args.sweep_dir, args.overrides, args.runner, args.launcher,
                        args.launcher_options, args.select, progress=True)
    print(summary)
    print(f"report: wmquant report {args.sweep_dir}")
    return 0 if summary.complete else 1


def runs_main(argv: Sequence[str]) -> int:
    from . import flag_parser
    from ..study.spec import parse_override_strings
    from ..study.store import ResultStore, format_runs

    parser = flag_parser("wmquant runs", "List the runs of a sweep directory.")
    parser.add_argument("action", choices=("list",))
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="keep runs whose config/result has KEY=VALUE (repeatable)")
    args = parser.parse_args(list(argv))
    if not args.sweep_dir.is_dir():
        raise ConfigError(f"{args.sweep_dir}: no such sweep directory")
    print(format_runs(ResultStore(args.sweep_dir).list_runs(parse_override_strings(args.filter))))
    return 0


def report_main(argv: Sequence[str]) -> int:
    from . import flag_parser
    from ..study.report import DEFAULT_MARGIN, write_report

    parser = flag_parser("wmquant report", "Markdown, CSV, LaTeX and HTML tables and figures for sweeps.")
    parser.add_argument("sweep_dirs", type=Path, nargs="+", metavar="SWEEP_DIR")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory of a single sweep's report (default: SWEEP_DIR/report)")
    parser.add_argument("--document", type=Path, default=None, metavar="FILE.md",
                        help="one study document for all the sweeps (their reports go to FILE/<spec>/)")
    parser.add_argument("--title", default="Study", help="title of --document")
    parser.add_argument("--preface", type=Path, default=None, metavar="FILE.md",
                        help="Markdown put at the top of --document (the reading of the results)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the McNemar marks")
    parser.add_argument("--margin", type=float, default=None,
                        help="equivalence margin of 'no loss' verdicts against FP, in success rate (default 0.10)")
    parser.add_argument("--no-model-figures", action="store_true",
                        help="skip Fig. 1 (activation outliers) and Fig. 2 (open-loop rollouts), which load the model")
    args = parser.parse_args(list(argv))
    if not 0.0 < args.alpha < 1.0:
        raise ConfigError(f"--alpha {args.alpha} is not a significance level; give a number strictly between 0 and 1 (e.g. 0.05)")
    if args.margin is not None and not 0.0 < args.margin < 1.0:
        raise ConfigError(f"--margin {args.margin} is not a difference in success rate; give a number strictly between 0 and 1 (e.g. 0.10)")
    margin = DEFAULT_MARGIN if args.margin is None else args.margin
    if len(args.sweep_dirs) > 1 and args.document is None:
        raise ConfigError(f"{len(args.sweep_dirs)} sweep directories need --document FILE.md (one document for all)")
    if args.document is not None and args.out is not None:
        raise ConfigError("--out and --document exclude each other (a document's reports go to FILE/<spec>/)")
    if args.preface is not None and not args.preface.is_file():
        raise ConfigError(f"--preface {args.preface}: no such file")
    for sweep_dir in args.sweep_dirs:
        if not args.no_model_figures and sweep_dir.is_dir():
            from ..study.model_figures import write_model_figures
            from ..study.store import ResultStore

            results, _ = ResultStore(sweep_dir).load_results()
            for name, path in write_model_figures(sweep_dir, results).items():
                print(f"{name:>20}: {path}")
    if args.document is not None:
        from ..study.document import write_study_document

        preface = args.preface.read_text(encoding="utf-8") if args.preface else ""
        paths = write_study_document(args.sweep_dirs, args.document, args.title, preface, alpha=args.alpha,
                                     margin=margin)
    else:
        paths = write_report(args.sweep_dirs[0], args.out, alpha=args.alpha, margin=margin)
    for kind, path in paths.items():
        print(f"{kind:>20}: {path}")
    return 0
