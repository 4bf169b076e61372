"""`wmquant bench`: speed and memory of planning (wmquant.bench)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..bench import SECTIONS, Bench, Settings, build_case_key_check, format_report
from ..errors import ConfigError
from ..planning.engine import resolve_device
from . import flag_parser


def bench_main(argv: Sequence[str]) -> int:

    parser = flag_parser("wmquant bench", "Speed and memory of planning: GEMM peaks, CEM steps, protocols, real low-bit kernels.")
    parser.add_argument("--quick", action="store_true", help="tiny CPU-sized shapes (a smoke run, < 60 s on 2 cores)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here (atomically, after each section)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), help=f"any of {', '.join(SECTIONS)}")
    parser.add_argument("--models", nargs="+", default=None,
                        help="cem-section models (default: wall pusht dinowm_h1 dinowm_h3; --quick: tiny_h1 tiny_h3 wall)")
    parser.add_argument("--original", action="store_true",
                        help="also time the original procedure (re-encode per sample, one episode at a time, FP32)")
    parser.add_argument("--pusht-data", default=None, metavar="DIR",
                        help="a PushT dataset (wmquant data --env pusht) for the PushT protocol")
    parser.add_argument("--protocol-compile", action="store_true", help="run the protocols with engine.compile")
    parser.add_argument("--samples", type=int, default=None, help="CEM samples per episode-step (default 300; --quick 32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 3; --quick 2)")
    parser.add_argument("--kernel-model", default=None, help="model of the kernels section (default dinowm_h1; --quick tiny_h1)")
    args = parser.parse_args(list(argv))
    for name in ("samples", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown bench section(s) {unknown}; valid: {', '.join(SECTIONS)}")
    if args.pusht_data and not Path(args.pusht_data).is_dir():
        raise ConfigError(f"--pusht-data {args.pusht_data} is not a directory")
    device = resolve_device(args.device)
    settings = Settings.make(device, args.quick, args.original, args.pusht_data, args.models, args.protocol_compile)
    settings.samples = args.samples or settings.samples
    settings.repeats = args.repeats or settings.repeats
    settings.kernel_case = args.kernel_model or settings.kernel_case
    for key in (*settings.cases, settings.kernel_case):
        build_case_key_check(key)
    bench = Bench(settings, args.json)
    report = bench.run(args.sections)
    bench.save()
    print(format_report(report))
    if args.json:
        print(f"wrote {args.json}")
    return 0
