"""Fig. 1 and Fig. 2 of a sweep: smoothing statistics and open-loop rollout rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmquant.models.checkpoint import build_world_model
from wmquant.quant.methods._equivalence import smoothquant_scale
from wmquant.study.model_figures import open_loop_rows, rollout_label, smoothed_stats, write_model_figures


def _tiny_model():
    torch.manual_seed(0)
    return build_world_model({
        "img_size": 16, "num_hist": 1, "proprio_dim": 2, "action_dim": 2,
        "encoder": {"backend": "vit", "patch_size": 8, "dim": 16, "depth": 2, "heads": 2, "out_dim": 8},
        "predictor": {"depth": 2, "heads": 2, "dim_head": 8, "mlp_dim": 16}, "decoder": None,
    })


def _result(run_id, method, w=16, a=16, group=None, granularity="per_tensor", enc=None, quant_encoder=True):
    enc_w, enc_a = enc or (w, a)
    quant = None if method == "fp" else {
        "quant_encoder": quant_encoder, "quant_predictor": True,
        "encoder": {"w_bits": enc_w, "a_bits": enc_a, "w_group_size": group, "a_granularity": granularity},
        "predictor": {"w_bits": w, "a_bits": a, "w_group_size": group, "a_granularity": granularity},
    }
    return {"run_id": run_id, "method": method, "quant": quant, "env": "wall"}


def test_rollout_labels_name_both_parts_bits():
    assert rollout_label(_result("a", "fp")) == "FP"
    assert rollout_label(_result("b", "rtn", 4, 16, 128)) == "RTN: encoder W4A32 / predictor W4A32 (G128)"
    assert rollout_label(_result("c", "omse", 8, 8, None, "per_token")) == \
        "OMSE: encoder W8A8 / predictor W8A8 (per-token)"
    assert rollout_label(_result("d", "smoothquant", 4, 4, enc=(8, 8))) == \
        "SmoothQuant: encoder W8A8 / predictor W4A4"
    assert rollout_label(_result("e", "rtn", 4, 4, quant_encoder=False)) == "RTN: encoder W32A32 / predictor W4A4"


def test_open_loop_rows_put_env_and_fp_first(tmp_path):
    frames = {name: np.full((3, 4, 4, 3), value, np.uint8) for name, value in (("fp", 10), ("rtn", 20))}
    for run_id in ("fp", "rtn"):
        run = tmp_path / "runs" / run_id
        run.mkdir(parents=True)
        np.savez(run / "open_loop.npz", env_frames=np.full((3, 4, 4, 3), 99, np.uint8), imagined_frames=frames[run_id],
                 episode_seed=np.int64(397))
    results = [_result("rtn", "rtn", 8, 8), _result("fp", "fp")]
    rows, episode = open_loop_rows(tmp_path, results)
    label = "RTN: encoder W8A8 / predictor W8A8"
    assert list(rows) == ["env", "FP", label] and episode == 397
    assert rows["env"][0, 0, 0, 0] == 99 and rows["FP"][0, 0, 0, 0] == 10 and rows[label][0, 0, 0, 0] == 20
    paths = write_model_figures(tmp_path, results)
    assert paths["rollouts_open_loop"].stat().st_size > 500


def test_smoothing_divides_each_qkv_and_fc1_input_by_its_scale():
    model = _tiny_model()
    stats = {}
    for part in ("encoder", "predictor"):
        for i, block in enumerate(getattr(model, part).blocks):
            for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                width = block.get_submodule(name).in_features
                values = torch.rand(width) + 0.5
                values[0] = 50.0  # one outlier channel
                stats[f"{part}.blocks.{i}.{name}"] = values
    after = smoothed_stats(model, stats, alpha=0.5)
    qkv = "encoder.blocks.1.attn.qkv"
    scale = smoothquant_scale(stats[qkv], model.encoder.blocks[1].attn.qkv.weight, 0.5)
    torch.testing.assert_close(after[qkv] * scale, stats[qkv])
    ratio = lambda v: float(v.max() / v.median())  # noqa: E731
    assert ratio(after[qkv]) < ratio(stats[qkv])
    assert after["encoder.blocks.1.attn.proj"] is stats["encoder.blocks.1.attn.proj"]  # not a smoothed pair
    with pytest.raises(KeyError):
        after["no.such.layer"]
