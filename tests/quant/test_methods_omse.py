"""OMSE: never worse than minmax on its own objective (weight SSE, or layer output SSE)."""

import pytest
import torch

from quant_toy import calibration_runner, make_model
from wmquant.errors import QuantizationError
from wmquant.quant import ActQuantizer, QuantConfig, QuantLinear, calibrate_and_quantize, get_method, qmath
from wmquant.quant.calibration import layer_input_rows
from wmquant.quant.methods.omse import search_output_clip_ratios

D = torch.float64


def _heavy_tailed(rows, cols, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen, dtype=D) * torch.rand(rows, cols, generator=gen, dtype=D).pow(3) * 4


def _correlated_inputs(tokens, cols, seed):
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, cols, generator=gen, dtype=D) * torch.linspace(0.2, 5, cols, dtype=D)
    return torch.randn(tokens, 4, generator=gen, dtype=D) @ basis + 0.1 * torch.randn(tokens, cols, generator=gen, dtype=D)


@pytest.mark.parametrize("group_size", [None, 16, 24])
def test_output_objective_never_worse_than_minmax(group_size):
    w = _heavy_tailed(12, 60, seed=1)
    x = _correlated_inputs(300, 60, seed=2)
    ratios = search_output_clip_ratios(w, x.T @ x, 3, group_size, True, qmath.clip_ratio_grid())
    searched = qmath.fake_quantize_weight(w, 3, group_size, clip_max=ratios, clip_min=ratios)
    minmax = qmath.fake_quantize_weight(w, 3, group_size)
    err = lambda w_hat: (x @ (w_hat - w).T).pow(2).sum(dim=0)  # noqa: E731  per output row
    assert (err(searched) <= err(minmax) * (1 + 1e-9)).all()
    assert err(searched).sum() < err(minmax).sum()


def test_group_refinement_never_worse_than_best_shared_row_ratio():
    w = _heavy_tailed(10, 64, seed=3)
    x = _correlated_inputs(400, 64, seed=4)
    grid = qmath.clip_ratio_grid(0.35, 1.0, 27)
    row_err = lambda r: (x @ (qmath.fake_quantize_weight(w, 3, 16, clip_max=r, clip_min=r) - w).T).pow(2).sum(0)  # noqa: E731
    # brute force: the best single ratio per row, shared by the row's 4 groups
    shared = torch.stack([row_err(torch.full((10, 4), r, dtype=D)) for r in grid.tolist()]).amin(dim=0)
    refined = search_output_clip_ratios(w, x.T @ x, 3, 16, True, grid)
    assert (refined != refined[:, :1]).any()  # some group moved away from its row's ratio
    assert (row_err(refined) <= shared * (1 + 1e-9)).all()
    assert row_err(refined).sum() < shared.sum()


def _layer_errors(model, runner, names):
    """Per layer: (weight SSE, output SSE on the calibration inputs) of the quantized weights."""
    rows = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: rows.setdefault(n, []).append(layer_input_rows(m, a[0]))) for n in names]
    runner()
    for h in hooks:
        h.remove()
    errors = {}
    for name in names:
        layer = model.get_submodule(name)
        w_hat = layer.weight_quantizer(layer.weight).detach()
        diff = w_hat - layer.weight.detach()
        x = torch.cat(rows[name])
        errors[name] = (float(diff.pow(2).sum()), float((x @ diff.T).pow(2).sum()))
    return errors


@pytest.mark.parametrize("objective, index", [("weight", 0), ("output", 1)])
def test_omse_method_beats_rtn_on_its_objective(objective, index):
    config = QuantConfig.uniform(w_bits=3, w_group_size=16)
    totals = {}
    for method, options in (("rtn", {}), ("omse", {"objective": objective})):
        model = make_model(dtype=D)
        runner = calibration_runner(model)
        calibrate_and_quantize(model, method, config, runner, method_options=options)
        names = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
        totals[method] = _layer_errors(model, runner, names)
    for name, rtn_err in totals["rtn"].items():
        assert totals["omse"][name][index] <= rtn_err[index] * (1 + 1e-9), name
    assert sum(e[index] for e in totals["omse"].values()) < sum(e[index] for e in totals["rtn"].values())


def test_omse_activation_search_switches_static_observers():
    model = make_model()
    report = calibrate_and_quantize(model, "omse", QuantConfig.uniform(w_bits=8, a_bits=8), calibration_runner(model),
                                    method_options={"activation_search": True})
    acts = [m for m in model.modules() if isinstance(m, ActQuantizer)]
    assert acts and all(a.observer == "omse" and a.frozen for a in acts)
    assert report["method_options"]["activation_search"] is True


@pytest.mark.parametrize("options, match", [
    ({"clip_start": 0.0}, "clip ratio grid"),
    ({"clip_stop": 1.5}, "clip ratio grid"),
    ({"clip_steps": 0}, "clip ratio grid"),
    ({"objective": "kl"}, "objective"),
    ({"activation_search": "yes"}, "activation_search"),
])
def test_bad_omse_options_are_refused(options, match):
    with pytest.raises(QuantizationError, match=match):
        get_method("omse").make_options(options)


@pytest.mark.parametrize("objective", ["weight", "output"])
def test_the_report_gives_each_layers_mean_searched_clip_ratio(objective):
    model = make_model(dtype=D)
    report = calibrate_and_quantize(model, "omse", QuantConfig.uniform(w_bits=3, w_group_size=16),
                                    calibration_runner(model), method_options={"objective": objective})
    means = report["method_report"]["mean_clip_ratio"]
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert set(layers) <= set(means)
    below_one = 0
    for name, layer in layers.items():
        ratios = layer.weight_quantizer.clip_max
        assert torch.equal(ratios, layer.weight_quantizer.clip_min)
        assert means[name] == pytest.approx(float(ratios.double().mean()), abs=1e-12), name
        below_one += means[name] < 1.0
    assert below_one > 0  # the search clipped somewhere, so a mean of the wrong thing would show


def test_the_output_search_takes_a_float32_gram_as_its_float64_values():
    w = _heavy_tailed(6, 32, seed=5)
    x = _correlated_inputs(200, 32, seed=6)
    gram32 = (x.T @ x).float()
    grid = qmath.clip_ratio_grid(0.35, 1.0, 14)
    got = search_output_clip_ratios(w, gram32, 3, 16, True, grid)
    expected = search_output_clip_ratios(w, gram32.double(), 3, 16, True, grid)
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
