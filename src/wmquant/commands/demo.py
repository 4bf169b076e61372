"""`wmquant demo`: the quickstart. Plans with the shipped Wall model in full precision, then with
round-to-nearest W8A8 (which holds) and W4A4 with per-tensor activations (which fails: 0.14 against
FP's 0.98 under the paper's full protocol), on the same episodes, with a CPU-sized budget; prints
success by MPC iteration and writes a small Markdown report with the plots."""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Sequence

from .. import io as wio
from ..errors import ConfigError

RUNS = (
    ("fp", "FP32", []),
    ("rtn_w8a8", "RTN W8A8 (per-tensor)", ["method=rtn", "quant=true", "quant_encoder=true", "predictor_wbit=8", "predictor_abit=8", "encoder_wbit=8",
                                          "encoder_abit=8", "calib_mode_a=layer_wise"]),
    ("rtn_w4a4", "RTN W4A4 (per-tensor)", ["method=rtn", "quant=true", "quant_encoder=true", "predictor_wbit=4", "predictor_abit=4", "encoder_wbit=4",
                                          "encoder_abit=4", "calib_mode_a=layer_wise", "W_GROUP_SIZE=-1"]),
)


def demo_main(argv: Sequence[str]) -> int:
    from ..configs import compose_config
    from ..planning.results import success_table
    from ..planning.runs import run_plan, run_quant
    from ..study.figures import plot_success_curves
    from . import flag_parser

    parser = flag_parser("wmquant demo", "FP, W8A8 and W4A4 planning on the shipped Wall model (CPU-sized budget).")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default demo_outputs/<time>)")
    parser.add_argument("--model", default="wall", help="a Wall model (default: the shipped one)")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--samples", type=int, default=48, help="CEM samples per step (paper: 300)")
    parser.add_argument("--topk", type=int, default=8, help="CEM elites (paper: 30)")
    parser.add_argument("--opt-steps", type=int, default=4, help="CEM steps per MPC iteration (paper: 10)")
    parser.add_argument("--iters", type=int, default=4, help="MPC iterations (paper: 50)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(list(argv))
    for name in ("episodes", "samples", "topk", "opt_steps", "iters"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    out = args.out or Path("demo_outputs") / _dt.datetime.now().strftime("%Y%m%d%H%M%S")
    budget = [
        f"model_name={args.model}", f"n_evals={args.episodes}", f"planner.max_iter={args.iters}",
        f"planner.sub_planner.num_samples={args.samples}", f"planner.sub_planner.topk={args.topk}",
        f"planner.sub_planner.opt_steps={args.opt_steps}", "quant_iter=1", "n_plot_samples=2",
    ]
    if args.threads:
        budget.append(f"engine.threads={args.threads}")
    start = time.perf_counter()
    results = {}
    for key, label, overrides in RUNS:
        cfg = compose_config("plan_wall", [*budget, *overrides, f"output_dir={out / key}", f"tag={key}"])
        print(f"[{time.perf_counter() - start:5.1f} s] {label} ...", flush=True)
        result, _ = run_plan(cfg) if key == "fp" else run_quant(cfg)
        results[label] = result
    seconds = time.perf_counter() - start
    rates = {label: r["success_rate_by_iter"] for label, r in results.items()}
    table = success_table(rates, columns=tuple(range(1, args.iters + 1)))
    print(table)
    plot_success_curves(list(results.values()), out / "success_by_iter.png")
    lines = [
        "# wmquant demo", "",
        f"Shipped model `{args.model}`, {args.episodes} evaluation episodes (seeds 99n+1), CEM with "
        f"{args.samples} samples / top {args.topk} / {args.opt_steps} steps, {args.iters} MPC iterations; "
        f"quantized runs calibrate on {args.episodes} separate episodes (seeds 99n+2) for 1 MPC iteration.",
        "", "Success rate after each MPC iteration (column k = after iteration k):", "", "```", table, "```", "",
        "| run | avg bits/weight (encoder, predictor) | wall time (s) |", "|---|---|---|",
    ]
    for label, r in results.items():
        bits = (r.get("quant") or {}).get("avg_bits_per_weight") or {}
        text = ", ".join(f"{bits[p]:.2f}" for p in ("encoder", "predictor") if bits.get(p)) or "32 (float)"
        lines.append(f"| {label} | {text} | {r['wall_seconds']:.1f} |")
    lines += [
        "", "Average bits per weight count every parameter of the module: quantized weights at their bit width plus "
        "their scales and zero-points, and the parameters that stay in float (biases, norms, embeddings, layers "
        "outside the quantized blocks) at 32 bits. So W8 averages about 9 bits, and W4 about 5.",
        "", f"Total: {seconds:.1f} s.", "", "![success](success_by_iter.png)", "",
    ]
    for key, label, _ in RUNS:
        lines.append(f"{label}: [result.json]({key}/result.json), ![{label} rollouts]({key}/rollout_grid.png)")
    wio.write_text(out / "report.md", "\n".join(lines) + "\n")
    print(f"wrote {out / 'report.md'} ({seconds:.1f} s)")
    return 0
