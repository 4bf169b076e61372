"""The table of docs/planning_aware.md ("A CPU proxy before the GPU study"), printed from the
published results/planning_aware_proxy/<config>/result.json files (one `wmquant quant ...
mechanisms=true` run each; the command is in that section).

    python docs/planning_aware_proxy.py [RESULTS_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: The configurations, by their result directory: the beyond_wall rows in its order, then
#: options and ablations of rollout, then the runs of commit 01c24e8 (learned ranges started from a
#: per-call sample), then those of 2026-12-04, made before the replay through the encoder and the
#: learned activation ranges existed (and with [rotate, rollout] quantizing the unrotated inputs in
#: training).
CONFIGS = {"rtn": "RTN", "rotate": "rotate", "rotate+gptq": "[rotate, gptq]", "rollout": "rollout",
           "mixed": "mixed (4.0 bits)", "rotate+rollout": "[rotate, rollout]",
           "rollout_let": "rollout with LET (let=true)",
           "rollout_predictor_only": "rollout, predictor only (encoder=false)",
           "rollout_weights_only": "rollout, weight clipping only (activation_ranges=false)",
           "rollout_centered": "rollout, centered cost term (cost_term=centered)",
           "rollout_1024_sequences": "rollout, 1024 recorded sequences (n_sequences=1024)",
           "rollout_1024_sequences_20_epochs": "rollout, 1024 recorded sequences, 20 epochs",
           "rollout_40_epochs": "rollout, 256 recorded sequences, 40 epochs (epochs=40)",
           "at_01c24e8/rollout": "rollout, 01c24e8 (ranges started from a per-call sample)",
           "at_01c24e8/rotate+rollout": "[rotate, rollout], 01c24e8 (likewise)",
           "at_01c24e8/mixed": "mixed, 01c24e8 (every replay encodes)",
           "before_encoder_replay/rollout": "rollout, 2026-12-04 (predictor only, weight clipping only)",
           "before_encoder_replay/mixed": "mixed, 2026-12-04 (predictor only)",
           "before_encoder_replay/rotate+rollout": "[rotate, rollout], 2026-12-04 (predictor only, unrotated training)"}
HEADER = ("| method | ranking: rho against FP | rho against the simulator | elite overlap | first plan succeeds "
          "(FP's: same row) | quantized objective misranks | encoder latent error | probe R^2 on its latents "
          "| probe R^2 refitted | calibration (s) |")


def table_rows(root: Path) -> list[str]:
    rows = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for directory, label in CONFIGS.items():
        result = json.loads((root / directory / "result.json").read_text())
        mechanisms = result["quant"]["mechanisms"]
        ranking, crossed, encoder = (mechanisms["ranking"]["summary"], mechanisms["cross_evaluation"]["summary"],
                                     mechanisms["encoder"])
        rows.append(
            f"| {label} | {ranking['median_rho_quantized_fp']:.3f} | {ranking['median_rho_quantized_simulator']:.3f} "
            f"| {ranking['mean_elite_overlap']:.2f} | {crossed['sim_success_of_quantized_plan']:.2f} "
            f"({crossed['sim_success_of_fp_plan']:.2f}) | {crossed['quantized_objective_misranks']:.2f} "
            f"| {encoder['relative_latent_error']['visual']:.4f} | {encoder['probe_r2']['fp_probe_on_quantized']:.2f} "
            f"| {encoder['probe_r2']['quantized_refit']:.2f} | {result['quant']['calibration_seconds']:.0f} |")
    return rows


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1] / "results" / "planning_aware_proxy"
    print("\n".join(table_rows(Path(sys.argv[1]) if len(sys.argv) > 1 else default)))
