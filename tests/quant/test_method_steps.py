"""One test per algorithmic step of each method, each named after the step it guards: removing the
step (or changing it) makes its test fail. References are direct float64 computations written here
from the methods' definitions, not calls into the code under test."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from quant_toy import calibration_runner, make_model
from wmquant.models.blocks import Block
from wmquant.quant import QuantConfig, QuantScheme, calibrate_and_quantize, qmath
from wmquant.quant.layers import WeightQuantizer
from wmquant.quant.methods import awq as awq_module
from wmquant.quant.methods import omniquant as omniquant_module
from wmquant.quant.methods.gptq import GPTQOptions, gptq_quantize
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
        moved = copy.deepcopy(block)
        moved.attn.qkv.weight.copy_(weight)
        moved.attn.proj.weight.copy_(proj)
        if bias is not None:
            moved.attn.qkv.bias.copy_(bias)
        torch.testing.assert_close(moved(x), reference, rtol=1e-10, atol=1e-10)  # an exact equivalence
    proj_before = attn.proj.weight.detach().clone()
    method = omniquant_module.OmniQuant()
    config = QuantConfig(encoder=QuantScheme(w_bits=4, a_bits=4), predictor=QuantScheme(), targets=ENCODER_LINEARS)
    method.transform(holder, config, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}),
                     method.make_options({"epochs": 5, "lwc": False}))
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference, rtol=1e-8, atol=1e-8)
    ratio = attn.proj.weight.detach() / proj_before  # the learned V scale, folded into proj's columns
    assert not torch.allclose(ratio, torch.ones_like(ratio))
    off = method.make_options({"epochs": 5, "lwc": False, "let_attention": False})
    holder2, _ = _one_block_problem()
    before2 = holder2.encoder.blocks[0].attn.proj.weight.detach().clone()
    method.transform(holder2, config, CalibrationData(block_inputs={"encoder": [BlockCall(x)]}), off)
    assert torch.equal(holder2.encoder.blocks[0].attn.proj.weight.detach(), before2)
