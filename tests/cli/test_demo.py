"""`wmquant demo` on a tiny budget: three runs on the same episodes, really quantized, a report."""

from __future__ import annotations

import json

import pytest

from wmquant.cli import main
from wmquant.models.checkpoint import shipped_model_names


@pytest.mark.skipif("wall" not in shipped_model_names(), reason="the shipped Wall model is missing")
def test_demo_runs_fp_and_two_quantized_configs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--episodes", "2", "--samples", "16", "--topk", "4",
                 "--opt-steps", "1", "--iters", "2"]) == 0
    printed = capsys.readouterr().out
    assert "FP32" in printed and "RTN W8A8" in printed and "RTN W4A4 (per-tensor)" in printed
    results = {key: json.loads((out / key / "result.json").read_text()) for key in ("fp", "rtn_w8a8", "rtn_w4a4")}
    assert {r["eval_seeds"] == results["fp"]["eval_seeds"] for r in results.values()} == {True}
    assert results["fp"]["quant"] is None
    w8 = results["rtn_w8a8"]["quant"]
    w4 = results["rtn_w4a4"]["quant"]
    assert w8["encoder"]["w_bits"] == 8 and w8["predictor"]["a_bits"] == 8
    assert w4["predictor"]["w_bits"] == 4 and w4["predictor"]["a_bits"] == 4 and w4["predictor"]["w_group_size"] is None
    assert w4["predictor"]["a_granularity"] == "per_tensor"
    assert 4.0 < w4["avg_bits_per_weight"]["predictor"] < 6.0 < w8["avg_bits_per_weight"]["predictor"] < 10.0
    report = (out / "report.md").read_text()
    assert "| RTN W4A4 (per-tensor) |" in report and "W8 averages about 9 bits" in report
    assert (out / "success_by_iter.png").exists()


def test_quant_refuses_a_config_that_quantizes_nothing(tmp_path, capsys):
    assert main(["quant", "quant=false", "quant_encoder=false", f"output_dir={tmp_path / 'x'}"]) == 2
    assert "nothing to quantize" in capsys.readouterr().err
