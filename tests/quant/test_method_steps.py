"""One test per algorithmic step of each method, each named after the step it guards: removing the
step (or changing it) makes its test fail. References are direct float64 computations written here
from the methods' definitions, not calls into the code under test."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from quant_toy import calibration_runner, make_model
from wmquant.errors import QuantizationError
from wmquant.models.blocks import Block
from wmquant.quant import QuantConfig, QuantScheme, calibrate_and_quantize, get_method, qmath
from wmquant.quant.layers import WeightQuantizer
from wmquant.quant.methods import awq as awq_module
from wmquant.quant.methods import omniquant as omniquant_module
from wmquant.quant.methods.gptq import GPTQOptions, gptq_quantize
from wmquant.quant.methods.omse import search_output_clip_ratios
from wmquant.quant.recorders import BlockCall, CalibrationData

D = torch.float64


# ---------------------------------------------------------------------------------------------
# GPTQ

def _gram(inputs: int, tokens: int = 200, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, 6, generator=gen, dtype=D) @ torch.randn(6, inputs, generator=gen, dtype=D)
    x += 0.1 * torch.randn(tokens, inputs, generator=gen, dtype=D)
    return x.T @ x, tokens


def _sym_quant(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(w / scale), -qmax - 1, qmax) * scale


def _gptq_reference(weight, gram, rows, bits, group, block, damp=0.01):
    """The original GPTQ (Frantar et al., gptq.py fasterquant, no act-order) in float64: blocks of
    columns, a working copy W1 per block, group parameters from W (the block-start weights inside
    the block), error feedback inside the block and then to the columns after it."""
    w = weight.clone().to(D)
    cols = w.shape[1]
    h = 2.0 / rows * gram.clone()
    h += damp * torch.diagonal(h).mean() * torch.eye(cols, dtype=D)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    scale = w.abs().amax(dim=1) / (2 ** (bits - 1) - 1)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            if group and (i1 + i) % group == 0:
                scale = w[:, i1 + i:i1 + i + group].abs().amax(dim=1) / (2 ** (bits - 1) - 1)
            col = w1[:, i]
            qcol = _sym_quant(col, scale, bits)
            q[:, i1 + i] = qcol
            err = (col - qcol) / hinv[i1 + i, i1 + i]
            w1[:, i:] -= err[:, None] * hinv[i1 + i, i1 + i:i2][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q


@pytest.mark.parametrize("block_size", [1, 3, 8, 24])
def test_gptq_error_feedback_across_blocks_equals_the_column_by_column_algorithm(block_size):
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(10, 24, generator=gen, dtype=D)
    gram, rows = _gram(24)
    scheme = QuantScheme(w_bits=3)
    got, _ = gptq_quantize(weight, gram, rows, scheme, GPTQOptions(block_size=block_size))
    naive = _gptq_reference(weight, gram, rows, 3, group=None, block=1)  # block 1: no lazy batching at all
    torch.testing.assert_close(got, naive, rtol=0, atol=1e-10)


def test_gptq_group_parameters_come_from_the_block_start_weights():
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(8, 32, generator=gen, dtype=D)
    gram, rows = _gram(32, seed=1)
    scheme = QuantScheme(w_bits=3, w_group_size=4)
    got, _ = gptq_quantize(weight, gram, rows, scheme, GPTQOptions(block_size=16))
    torch.testing.assert_close(got, _gptq_reference(weight, gram, rows, 3, group=4, block=16), rtol=0, atol=1e-10)
    updated, _ = gptq_quantize(weight, gram, rows, scheme, GPTQOptions(block_size=16, group_params="updated"))
    assert not torch.allclose(updated, got)  # the two rules differ on this problem


def _gptq_act_order_reference(weight, gram, rows, bits, group, block, act_order, damp=0.01):
    """The original GPTQ with its dead-column handling and, for act-order, static groups, in float64:
    an input that never fires (H[j, j] = 0) gets H[j, j] = 1 and W[:, j] = 0; every group's scale
    comes from that W in the natural column order; act-order quantizes the columns by descending
    H[j, j] and each column keeps its own group's scale; the codes are put back in column order."""
    w = weight.clone().to(D)
    cols = w.shape[1]
    h = 2.0 / rows * gram.clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    width = group or cols
    qmax = 2 ** (bits - 1) - 1
    group_scales = [w[:, g:g + width].abs().amax(dim=1) / qmax for g in range(0, cols, width)]
    perm = torch.argsort(torch.diagonal(h), descending=True) if act_order else torch.arange(cols)
    w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.diagonal(h).mean() * torch.eye(cols, dtype=D)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            qcol = _sym_quant(w1[:, i], group_scales[int(perm[i1 + i]) // width], bits)
            q[:, i1 + i] = qcol
            err = (w1[:, i] - qcol) / hinv[i1 + i, i1 + i]
            w1[:, i:] -= err[:, None] * hinv[i1 + i, i1 + i:i2][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q[:, torch.argsort(perm)]


@pytest.mark.parametrize("group", [None, 8])
def test_gptq_act_order_quantizes_by_descending_hessian_diagonal_with_static_groups(group):
    gen = torch.Generator().manual_seed(6)
    weight = torch.randn(6, 24, generator=gen, dtype=D)
    gram, rows = _gram(24, seed=2)
    gram *= torch.outer(torch.linspace(0.2, 3.0, 24, dtype=D), torch.linspace(0.2, 3.0, 24, dtype=D))  # uneven
    scheme = QuantScheme(w_bits=3, w_group_size=group)
    got, _ = gptq_quantize(weight, gram, rows, scheme, GPTQOptions(block_size=8, act_order=True))
    expected = _gptq_act_order_reference(weight, gram, rows, 3, group, 8, act_order=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    plain = _gptq_act_order_reference(weight, gram, rows, 3, group, 8, act_order=False)
    assert not torch.allclose(expected, plain)  # the order matters on this problem


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_zeroes_a_column_whose_input_never_fires(act_order):
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(6, 16, generator=gen, dtype=D) * 0.1
    weight[:, 5] = 0.9  # the largest weight of every row sits on the dead input
    # small inputs: H[j, j] = 1 for the dead input then dominates the damping (0.01 mean diag H), as
    # in the original, where that choice is not scale-free
    x = torch.randn(300, 16, generator=gen, dtype=D) * 1e-3
    x[:, 5] = 0.0
    options = GPTQOptions(block_size=4, act_order=act_order)
    got, qparams = gptq_quantize(weight, x.T @ x, 300, QuantScheme(w_bits=3), options)
    assert torch.all(got[:, 5] == 0)
    expected = _gptq_act_order_reference(weight, x.T @ x, 300, 3, None, 4, act_order=act_order)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # the dead column does not set the range: 0.9 / 3 would flush most weights to 0
    assert torch.all(qparams.scale[:, 0] < 0.3 - 1e-3)


def test_gptq_accumulates_the_hessian_over_every_calibration_call():
    model = make_model(dtype=D)
    block = model.encoder.blocks[0]
    width = block.attn.qkv.in_features
    gen = torch.Generator().manual_seed(8)
    calls = [torch.randn(2, 5, width, generator=gen, dtype=D), 3 * torch.randn(1, 7, width, generator=gen, dtype=D)]
    seen = []
    hook = block.attn.qkv.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().reshape(-1, width)))
    with torch.no_grad():
        for x in calls:
            block(x)
    hook.remove()
    rows = torch.cat(seen)
    qkv_before = block.attn.qkv.weight.detach().clone()
    config = QuantConfig(encoder=QuantScheme(w_bits=3), predictor=QuantScheme(), targets=("encoder.blocks.0.attn.qkv",))
    gptq = get_method("gptq")
    options = gptq.make_options({"batch_size": 1})
    result = gptq.transform(model, config, CalibrationData(block_inputs={"encoder": [BlockCall(x) for x in calls]}), options)
    expected, _ = gptq_quantize(qkv_before, rows.T @ rows, rows.shape[0], QuantScheme(w_bits=3), options)
    torch.testing.assert_close(block.attn.qkv.weight.detach(), expected, rtol=0, atol=1e-12)
    # the hooks that gathered the Hessian are gone, and the report gives the weights' RMS change
    # (below: a target in block 1 only gets block 1's inputs, through the untouched block 0)
    assert not any(module._forward_pre_hooks for module in model.modules())
    change = (expected - qkv_before).pow(2).mean().sqrt().item()
    assert result.report["encoder.blocks.0.attn.qkv"]["weight_change_rms"] == pytest.approx(change, rel=1e-12)

    model = make_model(dtype=D)
    second = model.encoder.blocks[1]
    seen.clear()
    hook = second.mlp.fc2.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for x in calls:
            second(model.encoder.blocks[0](x))
    hook.remove()
    rows = torch.cat(seen)
    fc2_before = second.mlp.fc2.weight.detach().clone()
    config = QuantConfig(encoder=QuantScheme(w_bits=3), predictor=QuantScheme(), targets=("encoder.blocks.1.mlp.fc2",))
    gptq.transform(model, config, CalibrationData(block_inputs={"encoder": [BlockCall(x) for x in calls]}), options)
    expected, _ = gptq_quantize(fc2_before, rows.T @ rows, rows.shape[0], QuantScheme(w_bits=3), options)
    torch.testing.assert_close(second.mlp.fc2.weight.detach(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("options, match", [
    ({"block_size": 0}, "block_size"), ({"damp": 0.0}, "damp"), ({"n_samples": 0}, "n_samples"),
    ({"batch_size": -1}, "batch_size"), ({"group_params": "start"}, "group_params"), ({"act_order": 1}, "act_order"),
])
def test_bad_gptq_options_are_refused(options, match):
    with pytest.raises(QuantizationError, match=match):
        get_method("gptq").make_options(options)


# ---------------------------------------------------------------------------------------------
# SmoothQuant

@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_smoothquant_alpha_sets_the_scale_exponents(alpha):
    model = make_model(dtype=D)
    stats = {}
    for part in ("encoder", "predictor"):
        for i, block in enumerate(getattr(model, part).blocks):
            for name in ("attn.qkv", "mlp.fc1"):
                width = block.get_submodule(name).in_features
                stats[f"{part}.blocks.{i}.{name}"] = torch.linspace(0.5, 4.0, width, dtype=D)
    qkv = model.encoder.blocks[0].attn.qkv
    weight_max = qkv.weight.detach().abs().amax(dim=0)
    norm_before = model.encoder.blocks[0].norm1.weight.detach().clone()
    config = QuantConfig.uniform(w_bits=8, a_bits=8)
    calibrate_and_quantize(model, "smoothquant", config, calibration_runner(model), act_stats=stats,
                           method_options={"alpha": alpha})
    x_max = stats["encoder.blocks.0.attn.qkv"]
    expected = x_max.clamp(min=1e-5) ** alpha / weight_max.clamp(min=1e-5) ** (1 - alpha)
    # the LayerNorm's weight is divided by s: s = norm_before / norm_after
    # (the scale is computed in float32, hence 1e-6; alpha 0.5 and 0.8 differ by far more)
    torch.testing.assert_close(norm_before / model.encoder.blocks[0].norm1.weight.detach(), expected, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------------
# AWQ

AWQ_PAIR_MODULES = {  # pair -> (the scaled Linear, the module whose output the scale search scores)
    "qkv": ("attn.qkv", "attn"), "proj": ("attn.proj", "attn.proj"), "fc1": ("mlp.fc1", "mlp"),
    "fc2": ("mlp.fc2", "mlp.fc2"),
}


def _awq_reference_scale(block, pair, x, bits=3, n_grid=20):
    """AWQ's scale search written from its definition, in float64: the scored module's input and
    the Linear's input recorded on the float block; s = mean|x_j|^r (floored at 1e-4) / sqrt(max s
    min s) for r = i / n_grid; W -> Q(W diag(s)) diag(s)^-1 with per-channel symmetric minmax; the
    first strictly least MSE of the module's output wins. Returns (s, the two least losses)."""
    linear_name, module_name = AWQ_PAIR_MODULES[pair]
    module, linear = block.get_submodule(module_name), block.get_submodule(linear_name)
    seen = {}
    hooks = [module.register_forward_pre_hook(lambda m, a: seen.setdefault("module", a[0].detach().clone())),
             linear.register_forward_pre_hook(lambda m, a: seen.setdefault("linear", a[0].detach().clone()))]
    with torch.no_grad():
        block(x)
    for hook in hooks:
        hook.remove()
    act_mean = seen["linear"].reshape(-1, linear.in_features).abs().mean(dim=0)
    weight = linear.weight.detach().clone()
    with torch.no_grad():
        reference = module(seen["module"])
    losses, scales = [], []
    for i in range(n_grid):
        scale = act_mean.pow(i / n_grid).clamp(min=1e-4)
        scale = scale / (scale.max() * scale.min()).sqrt()
        scaled = weight * scale
        step = scaled.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1)
        with torch.no_grad():
            linear.weight.copy_(_sym_quant(scaled, step, bits) / scale)
            losses.append((module(seen["module"]) - reference).pow(2).mean().item())
            linear.weight.copy_(weight)
        scales.append(scale)
    best = losses.index(min(losses))
    return scales[best], sorted(losses)[:2]


@pytest.mark.parametrize("pair", ["qkv", "proj", "fc1", "fc2"])
def test_awq_folds_the_scale_its_definition_chooses(pair):
    # block 1 of the encoder, so that its inputs must come through block 0 (which has no target)
    model = make_model(dtype=D)
    gen = torch.Generator().manual_seed(9)
    x0 = torch.randn(2, 9, model.encoder.blocks[0].attn.qkv.in_features, generator=gen, dtype=D)
    with torch.no_grad():
        x1 = model.encoder.blocks[0](x0)
    block = model.encoder.blocks[1]
    expected, (least, second) = _awq_reference_scale(block, pair, x1)
    assert second > least * (1 + 1e-6)  # a clear winner, which is not s = 1
    assert not torch.allclose(expected, torch.ones_like(expected))
    linear_name = AWQ_PAIR_MODULES[pair][0]
    before = {name: p.detach().clone() for name, p in block.named_parameters()}
    config = QuantConfig(encoder=QuantScheme(w_bits=3), predictor=QuantScheme(), targets=(f"encoder.blocks.1.{linear_name}",))
    awq = awq_module.AWQ()
    awq.transform(model, config, CalibrationData(block_inputs={"encoder": [BlockCall(x0)]}),
                  awq.make_options({"pairs": [pair], "clip": False}))
    after = dict(block.named_parameters())
    # the scaled Linear's input columns are multiplied by s ...
    torch.testing.assert_close(after[f"{linear_name}.weight"].detach(), before[f"{linear_name}.weight"] * expected,
                               rtol=1e-9, atol=0)
    # ... and s is divided out where that input is made
    if pair in ("qkv", "fc1"):
        norm = "norm1" if pair == "qkv" else "norm2"
        torch.testing.assert_close(after[f"{norm}.weight"].detach(), before[f"{norm}.weight"] / expected, rtol=1e-9, atol=0)
        torch.testing.assert_close(after[f"{norm}.bias"].detach(), before[f"{norm}.bias"] / expected, rtol=1e-9, atol=0)
    elif pair == "proj":
        v = slice(2 * block.attn.proj.in_features, None)
        torch.testing.assert_close(after["attn.qkv.weight"].detach()[v], before["attn.qkv.weight"][v] / expected[:, None],
                                   rtol=1e-9, atol=0)
    else:
        torch.testing.assert_close(block.mlp.act.scales, expected, rtol=1e-9, atol=0)


def test_awq_refuses_blocks_it_cannot_fold_into():
    model = make_model(dtype=D)
    block = model.encoder.blocks[0]
    block.norm1 = nn.LayerNorm(block.norm1.normalized_shape, elementwise_affine=False, dtype=D)
    block.norm2 = nn.LayerNorm(block.norm2.normalized_shape, elementwise_affine=False, dtype=D)
    x = torch.randn(2, 5, block.attn.qkv.in_features, generator=torch.Generator().manual_seed(1), dtype=D)
    awq = awq_module.AWQ()
    for pair, linear, message in (("qkv", "attn.qkv", "norm1 must be a LayerNorm"), ("fc1", "mlp.fc1", "norm2 must be a LayerNorm")):
        config = QuantConfig(encoder=QuantScheme(w_bits=3), predictor=QuantScheme(), targets=(f"encoder.blocks.0.{linear}",))
        with pytest.raises(QuantizationError, match=message):
            awq.transform(model, config, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}),
                          awq.make_options({"pairs": [pair], "clip": False}))


def _awq_reference_clip(weight, rows_x, bits, group, factors):
    """Per (row, group) clip ratio from the definition: the group's absmax shrunk by f sets the
    symmetric step, values beyond clamp to the integer range; the error of a factor is the mean over
    tokens of (sum_k x_k (w_hat_k - w_k))^2 within the group; the first strict least error wins."""
    out_features, in_features = weight.shape
    qmax = 2 ** (bits - 1) - 1
    chosen = torch.ones(out_features, in_features // group, dtype=D)
    for o in range(out_features):
        for g in range(in_features // group):
            cols = slice(g * group, (g + 1) * group)
            w, x = weight[o, cols], rows_x[:, cols]
            errors = []
            for f in factors:
                w_hat = _sym_quant(w, w.abs().max() * f / qmax, bits)
                errors.append((x @ (w_hat - w)).pow(2).mean().item())
            chosen[o, g] = factors[errors.index(min(errors))]
    return chosen


def test_awq_clip_search_is_the_first_least_output_error_ratio():
    gen = torch.Generator().manual_seed(10)
    weight = torch.randn(6, 16, generator=gen, dtype=D)
    weight[:, 0] *= 6  # outliers make clipping pay in some groups and not in others
    weight[3] = 0.0  # a row of zeros: every factor is exact, and the first (1) is kept
    rows_x = torch.randn(40, 16, generator=gen, dtype=D)
    factors = [1.0 - i / 20 for i in range(10)]
    expected = _awq_reference_clip(weight, rows_x, 3, 8, factors)
    assert len(set(expected.flatten().tolist())) > 2  # several different winners
    assert expected[3].tolist() == [1.0, 1.0]
    got = awq_module.search_clip(weight, rows_x, QuantScheme(w_bits=3, w_group_size=8), factors, row_chunk=4)
    assert torch.equal(got, expected)


def test_awq_clip_search_keeps_at_most_max_tokens_rows_spread_over_the_calibration():
    rows = torch.arange(20, dtype=D).reshape(10, 2)
    assert awq_module._strided_rows(rows, 3)[:, 0].tolist() == [0.0, 6.0, 12.0]  # every 3rd row, the first 3
    assert torch.equal(awq_module._strided_rows(rows, 50), rows)


def test_awq_clip_search_uses_the_inputs_rescaled_by_the_chosen_scale(monkeypatch):
    """After a pair's scale s is folded (W <- W diag(s)), the Linear's input is x / s; the clip
    search must score the clipped weights on x / s."""
    model = make_model(dtype=D)
    block = model.encoder.blocks[0]
    seen = {}
    original = awq_module.search_clip

    def spy(weight, rows_x, scheme, factors, row_chunk=256):
        seen.setdefault(len(seen), (weight.clone(), rows_x.clone()))
        return original(weight, rows_x, scheme, factors, row_chunk)

    monkeypatch.setattr(awq_module, "search_clip", spy)
    inputs = []
    hook = block.mlp.fc2.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 9, block.attn.qkv.in_features, generator=gen, dtype=D) * 2
    with torch.no_grad():
        block(x)
    hook.remove()
    fc2_before = block.mlp.fc2.weight.detach().clone()
    calib = CalibrationData(block_inputs={"encoder": [BlockCall(x)]})
    scheme = QuantScheme(w_bits=3)
    config = QuantConfig(encoder=scheme, predictor=QuantScheme(), targets=("encoder.blocks.0.mlp.fc2",))
    awq = awq_module.AWQ()
    awq.transform(model, config, calib, awq.make_options({"pairs": ["fc2"], "clip_max_tokens": 10_000}))
    scale = block.mlp.fc2.weight.detach()[0] / fc2_before[0]  # the folded per-input-channel scale
    assert not torch.allclose(scale, torch.ones_like(scale))  # a non-trivial scale was chosen
    weight, rows = seen[0]
    torch.testing.assert_close(rows, inputs[0] / scale, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weight, block.mlp.fc2.weight.detach())


def test_awq_clip_search_leaves_the_q_and_k_rows_unclipped():
    results = {}
    for clip_qk in (False, True):
        model = make_model(dtype=D)
        config = QuantConfig(encoder=QuantScheme(w_bits=3), predictor=QuantScheme(),
                             targets=("encoder.blocks.*.attn.qkv",))
        report = calibrate_and_quantize(model, "awq", config, calibration_runner(model),
                                        method_options={"clip_qk": clip_qk, "pairs": [], "max_shrink": 0.9})
        qkv = model.encoder.blocks[0].attn.qkv
        results[clip_qk] = (qkv.weight_quantizer.clip_max.clone(), model.encoder.blocks[0].attn.proj.in_features)
        assert report["method"] == "awq"
    ratios, inner = results[False]
    assert torch.all(ratios[: 2 * inner] == 1.0)  # q and k rows: full range
    assert torch.any(ratios[2 * inner:] < 1.0)  # v rows searched
    searched, _ = results[True]
    assert torch.any(searched[: 2 * inner] < 1.0)  # with clip_qk the q/k rows are searched too


# ---------------------------------------------------------------------------------------------
# OmniQuant

ENCODER_LINEARS = tuple(f"encoder.blocks.*.{name}" for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))


def _one_block_problem(seed: int = 0):
    torch.manual_seed(seed)
    block = Block(16, 2, 32, dim_head=8).double()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(4, 6, 16, generator=gen, dtype=D)
    x[..., 3] += 4.0  # an offset channel: a shift helps
    holder = nn.Module()
    holder.encoder = nn.Module()
    holder.encoder.blocks = nn.ModuleList([block])
    holder.predictor = nn.Module()
    holder.predictor.blocks = nn.ModuleList()
    return holder, x


def test_omniquant_training_sees_quantized_activations(monkeypatch):
    holder, x = _one_block_problem()
    calls = {"n": 0}
    original = qmath.per_tensor_fake_quantize

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(qmath, "per_tensor_fake_quantize", counting)
    config = QuantConfig(encoder=QuantScheme(w_bits=4, a_bits=4), predictor=QuantScheme(), targets=ENCODER_LINEARS)
    method = omniquant_module.OmniQuant()
    options = method.make_options({"epochs": 2})
    method.transform(holder, config, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}), options)
    # 4 activation-quantized Linears per forward; 2 epochs x 1 call, plus the reconstruction passes
    assert calls["n"] >= 4 * 2


def test_omniquant_let_shift_is_learned_and_folded_into_the_forward():
    results = {}
    for shift in (True, False):
        holder, x = _one_block_problem()
        reference = copy.deepcopy(holder)
        config = QuantConfig(encoder=QuantScheme(w_bits=4, a_bits=8), predictor=QuantScheme(), targets=ENCODER_LINEARS)
        method = omniquant_module.OmniQuant()
        options = method.make_options({"epochs": 5, "let": True, "let_shift": shift, "lwc": False})
        method.transform(holder, config, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}), options)
        block = holder.encoder.blocks[0]
        with torch.no_grad():
            # the fused float block computes the same function as before (LET is an equivalence)
            torch.testing.assert_close(block(x), reference.encoder.blocks[0](x), rtol=1e-8, atol=1e-8)
        results[shift] = (block.norm1.bias.detach().clone(), block.attn.qkv.bias)
    shifted_bias, qkv_bias = results[True]
    unshifted_bias, _ = results[False]
    assert qkv_bias is not None  # the shift's product W @ delta went into a bias
    assert not torch.allclose(shifted_bias, unshifted_bias)  # the learned shift moved the LayerNorm's bias


def test_omniquant_let_scale_and_shift_are_trained_from_their_start():
    """With LET, the fused qkv Linear is W diag(s) with bias b + W d: s and d read back from it move
    away from where 0 epochs leave them, so both are learned."""
    holder, x = _one_block_problem()
    qkv = holder.encoder.blocks[0].attn.qkv
    weight, bias = qkv.weight.detach().clone(), qkv.bias.detach().clone()
    config = QuantConfig(encoder=QuantScheme(w_bits=4, a_bits=4), predictor=QuantScheme(), targets=ENCODER_LINEARS)
    method = omniquant_module.OmniQuant()
    learned = {}
    for epochs in (0, 1):  # one epoch of one batch is one step
        model = copy.deepcopy(holder)
        options = method.make_options({"epochs": epochs, "let": True, "lwc": False, "let_attention": False})
        method.transform(model, config, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}), options)
        fused = model.encoder.blocks[0].attn.qkv
        scale = fused.weight.detach()[0] / weight[0]
        shift = torch.linalg.lstsq(weight, (fused.bias.detach() - bias)[:, None]).solution[:, 0]
        torch.testing.assert_close(fused.weight.detach(), weight * scale, rtol=1e-9, atol=1e-12)  # one scale per column
        learned[epochs] = (scale, shift)
    assert not torch.allclose(learned[0][0], learned[1][0], rtol=1e-4)
    assert not torch.allclose(learned[0][1], learned[1][1], rtol=1e-4, atol=1e-6)


def test_omniquant_let_refuses_a_norm_without_affine_parameters():
    holder, x = _one_block_problem()
    block = holder.encoder.blocks[0]
    block.norm2 = nn.LayerNorm(block.norm2.normalized_shape, elementwise_affine=False, dtype=D)
    config = QuantConfig(encoder=QuantScheme(w_bits=4, a_bits=8), predictor=QuantScheme(), targets=ENCODER_LINEARS)
    method = omniquant_module.OmniQuant()
    with pytest.raises(QuantizationError, match="encoder.blocks.0.norm2 must be a LayerNorm with weight and bias"):
        method.transform(holder, config, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}),
                         method.make_options({"epochs": 0, "let": True}))


def test_omniquant_keeps_the_last_epoch_unless_told_to_keep_the_best():
    """A learning rate that makes training diverge: the last epoch is worse than the start, so the
    default (the original's: the last epoch) ends above the initial loss, and keep_best ends at or
    below it, having restored the best parameters seen."""
    config = QuantConfig(encoder=QuantScheme(w_bits=3, a_bits=4), predictor=QuantScheme(), targets=ENCODER_LINEARS)
    method = omniquant_module.OmniQuant()
    reports = {}
    for keep_best in (False, True):
        holder, x = _one_block_problem()
        options = method.make_options({"epochs": 4, "lwc_lr": 2.0, "let_lr": 2.0, "keep_best": keep_best})
        result = method.transform(holder, config, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}), options)
        reports[keep_best] = result.report["encoder.blocks.0"]
        # the block's own parameters are trainable again afterwards
        assert all(p.requires_grad for p in holder.encoder.blocks[0].parameters())
    assert reports[False]["final_loss"] > reports[False]["initial_loss"]
    assert reports[True]["final_loss"] <= reports[True]["initial_loss"] * (1 + 1e-9)


def test_omniquant_keep_best_restores_the_best_epoch_not_the_last_improvement():
    """Training is deterministic, so a run of k epochs ends where epoch k of a longer run is. At this
    learning rate the loss falls unevenly: epoch 5 is the best, and epoch 6 is better than the start
    but worse than epoch 5. keep_best must end at epoch 5's loss."""
    config = QuantConfig(encoder=QuantScheme(w_bits=3, a_bits=4), predictor=QuantScheme(), targets=ENCODER_LINEARS)
    method = omniquant_module.OmniQuant()

    def final_loss(epochs, keep_best=False):
        holder, x = _one_block_problem()
        options = method.make_options({"epochs": epochs, "lwc_lr": 0.05, "let_lr": 0.05, "keep_best": keep_best})
        result = method.transform(holder, config, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}), options)
        return result.report["encoder.blocks.0"]["final_loss"]

    by_epoch = [final_loss(k) for k in range(7)]
    best_epoch = min(range(7), key=by_epoch.__getitem__)
    assert 0 < best_epoch < 6 and by_epoch[6] < by_epoch[0]  # the case the test is about
    assert final_loss(6, keep_best=True) == pytest.approx(by_epoch[best_epoch], rel=1e-9)


def test_omniquant_propagates_float_and_quantized_inputs_through_blocks_without_targets():
    """Targets in block 1 only: its shift starts at the midpoints of block 1's own float inputs, and
    its quantized inputs are block 0's outputs (a loss on block 0's inputs would be of order 1)."""
    torch.manual_seed(3)
    blocks = [Block(16, 2, 32, dim_head=8).double() for _ in range(2)]
    holder = nn.Module()
    holder.encoder = nn.Module()
    holder.encoder.blocks = nn.ModuleList(blocks)
    holder.predictor = nn.Module()
    holder.predictor.blocks = nn.ModuleList()
    x = torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(4), dtype=D) * 2
    qkv = blocks[1].attn.qkv
    weight, bias = qkv.weight.detach().clone(), qkv.bias.detach().clone()
    with torch.no_grad():
        qkv_input = blocks[1].norm1(blocks[0](x)).flatten(0, -2)
    midpoint = (qkv_input.amin(0) + qkv_input.amax(0)) / 2
    config = QuantConfig(encoder=QuantScheme(w_bits=8, a_bits=8), predictor=QuantScheme(),
                         targets=tuple(f"encoder.blocks.1.{n}" for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")))
    method = omniquant_module.OmniQuant()
    result = method.transform(holder, config, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}),
                              method.make_options({"epochs": 0, "let": True, "lwc": False, "let_attention": False}))
    torch.testing.assert_close(qkv.bias.detach(), bias + weight @ midpoint, rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        scale = blocks[1](blocks[0](x)).pow(2).mean().item()
    assert result.report["encoder.blocks.1"]["final_loss"] < 1e-3 * scale


def test_omniquant_let_shift_starts_at_each_input_channels_midpoint():
    """OmniQuant's act_shifts: (min + max) / 2 per channel of each LET Linear's float input; with 0
    epochs the fused bias of that Linear gains exactly W @ shift."""
    holder, x = _one_block_problem()
    block = holder.encoder.blocks[0]
    seen: dict[str, list] = {"attn.qkv": [], "mlp.fc1": []}
    handles = [block.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: seen[n].append(a[0].detach()))
               for n in seen]
    with torch.no_grad():
        block(x)
    for handle in handles:
        handle.remove()
    before = {n: (block.get_submodule(n).weight.detach().clone(),
                  block.get_submodule(n).bias.detach().clone() if block.get_submodule(n).bias is not None
                  else torch.zeros(block.get_submodule(n).out_features, dtype=D)) for n in seen}
    config = QuantConfig(encoder=QuantScheme(w_bits=8, a_bits=8), predictor=QuantScheme(), targets=ENCODER_LINEARS)
    method = omniquant_module.OmniQuant()
    for init in ("midpoint", "zero"):
        model = copy.deepcopy(holder)
        options = method.make_options({"epochs": 0, "let": True, "lwc": False, "let_attention": False, "shift_init": init})
        method.transform(model, config, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}), options)
        for name, inputs in seen.items():
            flat = torch.cat(inputs).flatten(0, -2)
            shift = (flat.amin(0) + flat.amax(0)) / 2 if init == "midpoint" else torch.zeros(flat.shape[-1], dtype=D)
            weight, bias = before[name]
            fused = model.encoder.blocks[0].get_submodule(name).bias.detach()
            torch.testing.assert_close(fused, bias + weight @ shift, rtol=1e-9, atol=1e-9)
    assert torch.cat(seen["attn.qkv"]).flatten(0, -2).mean(0).abs().max() > 0.05  # the midpoints are not 0


# ---------------------------------------------------------------------------------------------
# Observers: QuantWM's OMSE with quantwm_weight_scale, per-token ranges

def _quantwm_omse(w: torch.Tensor, bits: int) -> torch.Tensor:
    """QuantWM's OMSE weight observer (spec quantwm.md section 2): per row, 101 ratios 0.35..1.0,
    s = r * absmax / (2^(b-1) - 1), the smallest squared error wins (strictly)."""
    qmax = 2 ** (bits - 1) - 1
    best = None
    out = torch.empty_like(w)
    absmax = w.abs().amax(dim=1, keepdim=True)
    for i in range(101):
        r = 0.35 + i * 0.0065
        s = (r * absmax / qmax).clamp(1e-5, 1e4)
        q = torch.clamp(torch.round(w / s), -qmax - 1, qmax) * s
        err = (q - w).pow(2).sum(dim=1)
        better = err < best if best is not None else torch.ones_like(err, dtype=torch.bool)
        best = err if best is None else torch.where(better, err, best)
        out[better] = q[better]
    return out


def test_quantwm_scale_leaves_omse_with_its_own_denominator():
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(12, 40, generator=gen, dtype=D)
    for flag in (False, True):
        quantizer = WeightQuantizer(QuantScheme(w_bits=4, w_observer="omse", quantwm_weight_scale=flag))
        torch.testing.assert_close(quantizer(w), _quantwm_omse(w, 4), rtol=0, atol=1e-6)
    minmax = WeightQuantizer(QuantScheme(w_bits=4, quantwm_weight_scale=True))
    absmax = w.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(minmax(w), _sym_quant(w, absmax / 7.5, 4))  # QuantWM's minmax: (2^b - 1) / 2


def test_per_token_ranges_include_zero_unless_asked_not_to():
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(5, 32, generator=gen, dtype=D) + 1.0  # all-positive tokens (e.g. after a GELU)
    widened = qmath.per_token_fake_quantize(x, 4)
    own = qmath.per_token_fake_quantize(x, 4, include_zero=False)
    # QuantWM's per-token quantizer: s = (max - min) / (2^b - 1), z = round(-min / s), q in [0, 2^b - 1]
    lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    s = (hi - lo) / 15
    z = torch.round(-lo / s)
    torch.testing.assert_close(own, (torch.clamp(torch.round(x / s) + z, 0, 15) - z) * s)
    s0 = hi / 15  # widened to [0, max]
    torch.testing.assert_close(widened, torch.clamp(torch.round(x / s0), 0, 15) * s0)
    assert (own - x).pow(2).mean() < (widened - x).pow(2).mean() / 2


def test_omniquant_attention_lets_are_exact_and_learned():
    from wmquant.quant.methods._equivalence import attention_let

    holder, x = _one_block_problem()
    block = holder.encoder.blocks[0]
    attn = block.attn
    inner = attn.proj.in_features
    gen = torch.Generator().manual_seed(8)
    v_scale = torch.rand(inner, generator=gen, dtype=D) * 3 + 0.2
    qk_scale = torch.rand(inner, generator=gen, dtype=D) * 3 + 0.2
    with torch.no_grad():
        reference = block(x)
        weight, bias, proj = attention_let(attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn, v_scale, qk_scale)
        # Q's rows / s_qk, K's rows * s_qk, V's rows / s_v, proj's columns * s_v
        rows = {"q": slice(0, inner), "k": slice(inner, 2 * inner), "v": slice(2 * inner, 3 * inner)}
        for name, factor in (("q", 1 / qk_scale), ("k", qk_scale), ("v", 1 / v_scale)):
            torch.testing.assert_close(weight[rows[name]], attn.qkv.weight[rows[name]] * factor[:, None], rtol=1e-14, atol=0)
            torch.testing.assert_close(bias[rows[name]], attn.qkv.bias[rows[name]] * factor, rtol=1e-14, atol=0)
        torch.testing.assert_close(proj, attn.proj.weight * v_scale[None, :], rtol=1e-14, atol=0)
        moved = copy.deepcopy(block)
        moved.attn.qkv.weight.copy_(weight)
        moved.attn.proj.weight.copy_(proj)
        if bias is not None:
            moved.attn.qkv.bias.copy_(bias)
        torch.testing.assert_close(moved(x), reference, rtol=1e-10, atol=1e-10)  # an exact equivalence
    proj_before = attn.proj.weight.detach().clone()
    qkv_before = attn.qkv.weight.detach().clone()
    method = omniquant_module.OmniQuant()
    config = QuantConfig(encoder=QuantScheme(w_bits=4, a_bits=4), predictor=QuantScheme(), targets=ENCODER_LINEARS)
    method.transform(holder, config, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}),
                     method.make_options({"epochs": 5, "lwc": False}))
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference, rtol=1e-8, atol=1e-8)
    ratio = attn.proj.weight.detach() / proj_before  # the learned V scale, folded into proj's columns
    assert not torch.allclose(ratio, torch.ones_like(ratio))
    # Q and K's rows are each quantized with their own scale, so a Q/K scale only matters where the
    # attention matmul's inputs are quantized: then it is learned. Q's rows change by c_j / a_i and
    # K's by c_j * a_i (c: the norm1 LET's column scale), so their ratio is a_i^2.
    changed = attn.qkv.weight.detach() / qkv_before
    assert torch.allclose(changed[inner:2 * inner, 0] / changed[:inner, 0], torch.ones(inner, dtype=D))
    holder3, _ = _one_block_problem()
    attn3 = holder3.encoder.blocks[0].attn
    qkv_before3 = attn3.qkv.weight.detach().clone()
    with_taps = QuantConfig(encoder=QuantScheme(w_bits=4, a_bits=4), predictor=QuantScheme(),
                            targets=ENCODER_LINEARS + ("attention_matmuls",))
    method.transform(holder3, with_taps, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}),
                     method.make_options({"epochs": 5, "lwc": False}))
    # the taps were quantized only while the block trained: the float model keeps its Identity taps
    assert all(type(getattr(attn3, f"{tap}_tap")) is torch.nn.Identity for tap in ("q", "k", "v", "probs"))
    changed = attn3.qkv.weight.detach() / qkv_before3
    qk_squared = changed[inner:2 * inner, 0] / changed[:inner, 0]
    assert not torch.allclose(qk_squared, torch.ones_like(qk_squared))
    off = method.make_options({"epochs": 5, "lwc": False, "let_attention": False})
    holder2, _ = _one_block_problem()
    before2 = holder2.encoder.blocks[0].attn.proj.weight.detach().clone()
    method.transform(holder2, config, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}), off)
    assert torch.equal(holder2.encoder.blocks[0].attn.proj.weight.detach(), before2)


@pytest.mark.parametrize("linears, learned", [(("attn.qkv", "attn.proj"), True), (("attn.qkv", "mlp.fc1", "mlp.fc2"), False)])
def test_omniquant_attention_let_needs_exactly_qkv_and_proj_among_the_targets(linears, learned):
    """The V/proj LET moves scales between qkv's V rows and proj's columns: it runs when both are
    quantized (also when they are the only targets), and never when proj is not a target."""
    holder, x = _one_block_problem()
    proj_before = holder.encoder.blocks[0].attn.proj.weight.detach().clone()
    config = QuantConfig(encoder=QuantScheme(w_bits=4, a_bits=4), predictor=QuantScheme(),
                         targets=tuple(f"encoder.blocks.*.{name}" for name in linears))
    method = omniquant_module.OmniQuant()
    method.transform(holder, config, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}),
                     method.make_options({"epochs": 3, "lwc": False}))
    changed = not torch.equal(holder.encoder.blocks[0].attn.proj.weight.detach(), proj_before)
    assert changed == learned


def test_a_second_activation_fold_multiplies_the_first():
    from wmquant.quant.methods._equivalence import ScaledActivation, fold_act_into_linear_

    holder, x = _one_block_problem()
    block = holder.encoder.blocks[0]
    hidden = block.mlp.fc2.in_features
    first, second = torch.linspace(0.5, 2.0, hidden, dtype=D), torch.linspace(3.0, 0.2, hidden, dtype=D)
    fc2_before = block.mlp.fc2.weight.detach().clone()
    with torch.no_grad():
        reference = block(x)
        fold_act_into_linear_(block.mlp, first)
        fold_act_into_linear_(block.mlp, second)  # e.g. AWQ after AWQ in a recipe
        assert isinstance(block.mlp.act, ScaledActivation) and not isinstance(block.mlp.act.act, ScaledActivation)
        torch.testing.assert_close(block.mlp.act.scales, first * second, rtol=1e-15, atol=0)
        torch.testing.assert_close(block.mlp.fc2.weight, fc2_before * first * second, rtol=1e-15, atol=0)
        torch.testing.assert_close(block(x), reference, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# OMSE with the output objective

def _omse_output_reference(weight, gram, bits, group, ratios):
    """OMSE's output objective from its definition, in float64, without the code's algebra: the
    error of W_hat is sum_rows e H e^T with e = W_hat - W. Stage 1: one ratio per row (every group
    of the row clipped by it), the first strictly least error. Stage 2: one sweep over the groups
    in order, each trying every ratio for that group alone (the rest as chosen so far) and keeping
    only strict improvements of the row's whole error."""
    qmax = 2 ** (bits - 1) - 1
    out_features, in_features = weight.shape
    n_groups = in_features // group

    def quantized(row, group_ratios):
        pieces = []
        for g, ratio in enumerate(group_ratios):
            w = row[g * group:(g + 1) * group]
            step = max(w.abs().max().item() * ratio / qmax, 1e-8)
            pieces.append(_sym_quant(w, step, bits))
        return torch.cat(pieces)

    def row_error(row, group_ratios):
        e = quantized(row, group_ratios) - row
        return (e @ gram @ e).item()

    chosen = torch.empty(out_features, n_groups, dtype=D)
    for r in range(out_features):
        errors = [row_error(weight[r], [ratio] * n_groups) for ratio in ratios]
        current = [ratios[errors.index(min(errors))]] * n_groups
        best = min(errors)
        for g in range(n_groups):
            for ratio in ratios:
                trial = current[:g] + [ratio] + current[g + 1:]
                err = row_error(weight[r], trial)
                if err < best:
                    best, current = err, trial
        chosen[r] = torch.tensor(current, dtype=D)
    return chosen


def test_omse_output_objective_is_a_row_search_then_one_sweep_over_groups():
    gen = torch.Generator().manual_seed(12)
    weight = torch.randn(5, 24, generator=gen, dtype=D) * torch.rand(5, 24, generator=gen, dtype=D).pow(3) * 4
    weight[2] = 0.0  # a row of zeros: every ratio is exact, and the first one is kept
    x = torch.randn(200, 24, generator=gen, dtype=D) @ torch.randn(24, 24, generator=gen, dtype=D)
    gram = x.T @ x
    ratios = qmath.clip_ratio_grid(0.35, 1.0, 14)
    expected = _omse_output_reference(weight, gram, 3, 8, ratios.tolist())
    assert (expected[:, 0] != expected[:, 1]).any()  # the sweep moved some group off its row's ratio
    assert expected[2].tolist() == [0.35] * 3
    got = search_output_clip_ratios(weight, gram, 3, 8, True, ratios)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
