"""`wmquant export`: calibrate a model, quantize it and write a real low-bit checkpoint."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from ..kernels.export import _calibrated_model, export_quantized, yaml_ready
from ..quant.recipes import registered
from . import flag_parser


def export_main(argv: Sequence[str]) -> int:

    parser = flag_parser("wmquant export", "Calibrate a model, quantize it and write a real low-bit checkpoint.")
    parser.add_argument("--model", default="wall", help="shipped model name or model directory (default: wall)")
    parser.add_argument("--method", default="rtn",
                        help=f"PTQ method or recipe (a+b, applied in order): {', '.join(registered())}")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="quantization and calibration keys of plan_<env>.yaml, e.g. predictor_wbit=4 "
                             "predictor_abit=16 W_GROUP_SIZE=128 calib_mode_a=token_wise")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--device", default="cpu", help="calibration device (default cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    args = parser.parse_args(list(argv))
    bad = [o for o in args.config if "=" not in o]
    if bad:
        raise ConfigError(f"--config takes KEY=VALUE items, got {bad}")
    if args.out.exists() and not args.overwrite:
        raise ConfigError(f"output directory {args.out} already exists; choose another --out or pass --overwrite")
    start = time.perf_counter()
    session, qconfig, method, report, cfg = _calibrated_model(
        args.model, [f"method={args.method}", *args.config], args.device
    )
    section = export_quantized(
        session.model, qconfig, args.out, session.bundle.config, overwrite=args.overwrite,
        extra={"export": {"method": method, "command": "wmquant export " + " ".join(argv),
                          "calibration": {"n_evals": int(cfg.n_evals), "quant_iter": int(cfg.quant_iter)},
                          "method_report": yaml_ready(report.get("method_report"))}},
    )
    sizes = section["weight_bytes"]
    print(f"wrote {args.out} ({len(section['layers'])} real layers, method {method}, {time.perf_counter() - start:.1f} s)")
    print(f"quantized weights: {sizes['stored_bytes']} bytes stored vs {sizes['fp16_bytes']} in FP16 "
          f"({sizes['stored_over_fp16']:.3f}x)", file=sys.stdout)
    return 0
