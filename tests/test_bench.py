"""`wmquant bench`: the analytic FLOP count, and a --quick run whose JSON must be self-consistent."""

from __future__ import annotations

import json

import pytest
import torch

from wmquant.bench import PEAK_TIMING_SLACK, check_report, predictor_flops
from wmquant.cli import main
from wmquant.models.checkpoint import build_world_model


def _dino_wm(num_hist: int):
    with torch.device("meta"):
        return build_world_model({"img_size": 224, "num_hist": num_hist, "proprio_dim": 4, "action_dim": 2,
                                  "decoder": None, "encoder": {"backend": "dinov2", "preset": "dinov2_vits14"}})


def test_predictor_flops_at_dino_wm_scale():
    """196 patches, width 404 = 384 + 10 + 10, 16 heads x 64, MLP 2048, 6 layers, horizon 5."""
    linear_per_token = 2 * (404 * 3072 + 1024 * 404 + 2 * 404 * 2048)  # qkv, proj, fc1, fc2
    one_frame = 6 * (196 * linear_per_token + 4 * 196 * 196 * 1024)  # + QK^T and AV
    assert predictor_flops(_dino_wm(1), horizon=5) == 5 * one_frame
    assert 300 * 5 * one_frame == pytest.approx(13.09e12, rel=1e-3)  # one CEM step of one episode
    # num_hist 3: windows of 1, 2, 3, 3, 3 frames; frame-causal attention covers 1, 3, 6 frame pairs.
    def window(frames: int) -> int:
        return 6 * (frames * 196 * linear_per_token + 4 * 196 * 196 * frames * (frames + 1) // 2 * 1024)

    assert predictor_flops(_dino_wm(3), horizon=5) == window(1) + window(2) + 3 * window(3)


def _numbers(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _numbers(value, f"{path}.{key}")
    elif isinstance(node, list):
        for value in node:
            yield from _numbers(value, path)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node


def test_quick_bench_writes_a_consistent_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--original", "--json", str(out)]) == 0
    assert "tiny_h1" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["schema"] == "wmquant.bench/1" and report["quick"] is True
    assert set(report["sections"]) == {"peaks", "cem", "protocol", "kernels"}
    assert report["consistency_problems"] == [] == check_report(report)

    fractions = [(p, v) for p, v in _numbers(report["sections"]) if p.endswith("fraction_of_peak")]
    times = [(p, v) for p, v in _numbers(report["sections"]) if p.endswith("seconds_per_episode_step")]
    assert len(fractions) >= 10 and all(0 < v <= 1 + PEAK_TIMING_SLACK for _, v in fractions), fractions
    assert len(times) >= 10 and all(v > 0 for _, v in times), times

    cem = report["sections"]["cem"]
    # tiny_h1: 16 patches, width 36, 2 heads x 16, MLP 64, 2 layers; 5 predictor calls of one frame.
    per_call = 2 * (16 * 2 * (36 * 96 + 32 * 36 + 2 * 36 * 64) + 4 * 16 * 16 * 32)
    assert cem["tiny_h1"]["predictor_flops_per_rollout"] == 5 * per_call
    fp32 = cem["tiny_h1"]["variants"]["fp32"]
    assert fp32["predictor_tflops"] == pytest.approx(
        fp32["predictor_flops_per_episode_step"] / fp32["seconds_per_episode_step"] / 1e12)
    assert fp32["predictor_flops_per_episode_step"] == 32 * 5 * per_call  # 32 samples in --quick

    protocol = report["sections"]["protocol"]["wall"]
    assert protocol["identical_success_by_iter"] is True
    assert protocol["skip_off"]["planned_episode_steps"] == 2 * 2 * 2  # 2 episodes x 2 iterations x 2 steps
    kernels = report["sections"]["kernels"]
    assert kernels["variants"]["w4a16_real"]["weight_bytes"]["stored_bytes"] > 0
    assert kernels["agreement"]["w4a16"]["real_vs_fake_rel_l2"] < 1e-5
    fp8 = kernels["variants"]["fp8_w8a8_real"]
    assert fp8["peak"] == "fp8" and fp8["weight_bytes"]["kernels"] == ["fp8_scaled_mm"]
    assert fp8["weight_bytes"]["stored_bytes"] == kernels["variants"]["w8a8_real"]["weight_bytes"]["stored_bytes"]
    assert kernels["agreement"]["fp8_w8a8"]["real_vs_fake_rel_l2"] < 5e-2
    assert report["sections"]["peaks"]["fp8"]["tflops"] > 0
    small = kernels["small_batch"]
    assert small["samples"] == 8 and small["variants"]["w4a16_real"]["samples"] == 8
    assert set(small["speedups"]) == {"fp8_w8a8_real", "w8a8_real", "w4a16_real", "w4a16_real_dequant"}
    crossover = kernels["int4_crossover"]
    assert [r["rows"] for r in crossover["rows"]] == [16, 64, 256]
    assert all(r["int4pack_seconds"] > 0 and r["dequant_seconds"] > 0 for r in crossover["rows"])
    faster = [r["rows"] for r in crossover["rows"] if r["dequant_seconds"] < r["int4pack_seconds"]]
    assert crossover["dequant_faster_from_rows"] == (min(faster) if faster else None)


def test_report_check_flags_impossible_numbers():
    bad = {"sections": {"cem": {"m": {"variants": {"fp32": {"predictor_fraction_of_peak": 1.4,
                                                            "seconds_per_episode_step": 0.0},
                                                   "bf16": {"error": "RuntimeError: boom"}}}}}}
    problems = check_report(bad)
    assert len(problems) == 3 and any("(0, 1.1]" in p for p in problems) and any("boom" in p for p in problems)
    # a few percent above 1 is timing noise between the peak and the rate, not an inconsistency
    assert check_report({"sections": {"cem": {"predictor_fraction_of_peak": 1.02}}}) == []


def test_bad_arguments_exit_with_2(capsys):
    assert main(["bench", "--quick", "--sections", "speed"]) == 2
    assert main(["bench", "--quick", "--models", "dinowm_hx"]) == 2
    assert "unknown bench" in capsys.readouterr().err
