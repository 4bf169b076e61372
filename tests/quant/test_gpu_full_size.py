"""Every method on a DINO-WM-sized world model on CUDA (ViT-S/14 encoder at 196 px, predictor 6 x
404 wide with 16 heads of 64), random weights, calibrated through planner-like rollouts.

Checks that each recipe runs at full size (memory, shapes, the 404-wide predictor with groups of
128) and prints its wall time. Run with `pytest -m gpu tests/quant/test_gpu_full_size.py -s`.
"""

import time

import pytest
import torch

from wmquant.quant import ActStatsRecorder, QuantConfig, calibrate_and_quantize, get_method

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
checkpoint = pytest.importorskip("wmquant.models.checkpoint")

DINO_WM = dict(img_size=224, num_hist=3, frameskip=5, proprio_dim=4, action_dim=2, decoder=None,
               encoder=dict(backend="dinov2", preset="dinov2_vits14"), predictor=dict(dropout=0.0))

CASES = [
    ("rtn", QuantConfig.uniform(w_bits=4, a_bits=8, w_group_size=128), {}),
    ("omse", QuantConfig.uniform(w_bits=4, a_bits=8, w_group_size=128), {"objective": "output"}),
    ("smoothquant", QuantConfig.uniform(w_bits=8, a_bits=8, a_granularity="per_token"), {"fc_fc": True}),
    ("awq", QuantConfig.uniform(w_bits=4, w_group_size=128), {}),
    ("omniquant", QuantConfig.uniform(w_bits=4, a_bits=8, w_group_size=128), {"epochs": 2, "n_samples": 32}),
    ("gptq", QuantConfig.uniform(w_bits=4, w_group_size=128), {}),
]


def _model():
    torch.manual_seed(0)
    model = checkpoint.build_world_model(DINO_WM).cuda().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight[:4] *= 20  # activation outliers
    return model


def _planner_like(model, rollouts=3, batch=32):
    def run():
        gen = torch.Generator(device="cuda").manual_seed(0)
        with torch.no_grad():
            for _ in range(rollouts):
                obs = {"visual": torch.rand(batch, 1, 3, 224, 224, device="cuda", generator=gen) * 2 - 1,
                       "proprio": torch.randn(batch, 1, 4, device="cuda", generator=gen)}
                model.rollout(obs, torch.randn(batch, 5, 10, device="cuda", generator=gen))
    return run


@pytest.mark.parametrize("method, config, options", CASES, ids=[c[0] for c in CASES])
def test_full_size_method_runs(method, config, options):
    model = _model()
    run = _planner_like(model)
    stats = None
    if get_method(method).needs_act_stats:
        with ActStatsRecorder(model) as recorder:
            run()
        stats = recorder.stats()
    torch.cuda.synchronize()
    start = time.perf_counter()
    report = calibrate_and_quantize(model, method, config, run, act_stats=stats, method_options=options)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        gen = torch.Generator(device="cuda").manual_seed(1)
        obs = {"visual": torch.rand(4, 1, 3, 224, 224, device="cuda", generator=gen) * 2 - 1,
               "proprio": torch.randn(4, 1, 4, device="cuda", generator=gen)}
        z = model.rollout(obs, torch.randn(4, 5, 10, device="cuda", generator=gen))[1]
    assert torch.isfinite(z).all()
    summary = report["summary"]
    assert summary["encoder"]["quantized_layers"] == 48 and summary["predictor"]["quantized_layers"] == 24
    print(f"\n{method}: {seconds:.1f} s, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, "
          f"bits/weight encoder {summary['encoder']['avg_bits_per_weight']:.3f} "
          f"predictor {summary['predictor']['avg_bits_per_weight']:.3f} "
          f"(quantized weights {summary['predictor']['avg_bits_quantized_weights']:.3f})")
