"""One registry: a new method is one file plus one registration (its import), and it then runs
from `wmquant quant`, a study spec and `wmquant report`; recipes of several methods compose in
order, and the combinations that cannot compose are refused."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest
import torch

from wmquant.cli import main
from wmquant.errors import QuantizationError
from wmquant.models.checkpoint import shipped_model_names
from wmquant.quant import QuantConfig, QuantScheme
from wmquant.quant.calibration import calibrate_and_quantize, check_composition
from wmquant.quant.legacy import legacy_flags
from wmquant.quant.methods import METHODS, get_method
from wmquant.quant.recipes import check_recipe, display_name, method_chain
from wmquant.study.spec import load_spec, study_methods

from quant_toy import calibration_runner, make_model

TOY_METHOD = '''
"""A toy method: RTN whose weight ranges are clipped to 80 % (for the registry test)."""
import torch
from wmquant.quant.layers import WeightQParams
from wmquant.quant.methods.base import MethodResult, PTQMethod, register_method
from wmquant.quant.api import active_targets
from wmquant.quant import qmath


@register_method("toyclip")
class ToyClip(PTQMethod):
    display_name = "ToyClip"

    def transform(self, model, qconfig, calib, options):
        qparams = {}
        for target in active_targets(model, qconfig):
            if target.is_tap or not target.scheme.quantizes_weights:
                continue
            weight = model.get_submodule(target.name).weight
            rows, cols = qmath.as_2d_weight(weight).shape
            groups = qmath.num_groups(cols, target.scheme.w_group_size)
            ratio = torch.full((rows, groups), 0.8)
            qparams[target.name] = WeightQParams(clip_max=ratio, clip_min=ratio)
        return MethodResult(weight_qparams=qparams, report={"clip": 0.8})
'''

TINY = ["n_evals=2", "n_calib=2", "planner.max_iter=1", "quant_iter=1", "planner.sub_planner.num_samples=8",
        "planner.sub_planner.topk=2", "planner.sub_planner.opt_steps=1", "save_plots=false", "engine.device=cpu"]
needs_wall = pytest.mark.skipif("wall" not in shipped_model_names(), reason="the shipped Wall model is missing")


@pytest.fixture()
def toy_method(tmp_path, monkeypatch):
    (tmp_path / "toy_method.py").write_text(TOY_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_method")  # the one registration line
    yield module
    METHODS.pop("toyclip", None)
    sys.modules.pop("toy_method", None)


@needs_wall
def test_a_new_method_runs_from_quant_a_study_spec_and_report(toy_method, tmp_path, capsys):
    from wmquant.study.sweep import run_sweep

    assert "toyclip" in study_methods() and display_name("toyclip") == "ToyClip"
    assert legacy_flags("toyclip") == {"w_quant_method": "minmax", "a_quant_method": "minmax"}
    out = tmp_path / "quant"
    assert main(["quant", "method=toyclip", "predictor_wbit=4", "predictor_abit=16", "encoder_wbit=4",
                 "encoder_abit=16", *TINY, f"output_dir={out}"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "toyclip" and result["quant"]["method_report"] == {"clip": 0.8}

    spec = tmp_path / "toy_study.yaml"
    spec.write_text(textwrap.dedent("""\
        name: toy_study
        env: wall
        columns: [0, 1]
        base: {model_name: wall, n_evals: 2, planner.max_iter: 1, quant_encoder: true, quant_iter: 1,
               save_plots: false, n_calib: 2}
        runs:
          - method: fp
          - {method: toyclip, wa_bits: [4, 16]}
          - {method: [toyclip, gptq], wa_bits: [4, 16]}
        """))
    runs = load_spec(spec).expand({})
    assert [r.overrides["method"] for r in runs] == ["fp", "toyclip", "toyclip+gptq"]
    overrides = {"planner.sub_planner.num_samples": 8, "planner.sub_planner.topk": 2,
                 "planner.sub_planner.opt_steps": 1, "engine.device": "cpu"}
    summary = run_sweep(spec, tmp_path / "sweep", overrides)
    assert summary.complete, summary
    assert main(["report", str(tmp_path / "sweep"), "--no-model-figures"]) == 0
    report = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert "| ToyClip | 4 | 32 |" in report and "| ToyClip+GPTQ | 4 | 32 |" in report


def test_unknown_methods_are_refused_everywhere_with_the_valid_names():
    with pytest.raises(QuantizationError, match="unknown method 'nope'; valid: awq, gptq, mixed, omniquant"):
        check_recipe("nope")
    with pytest.raises(QuantizationError, match="unknown method 'nope'; valid: fp, awq"):
        check_recipe(["rtn", "nope"], allow_float=True)
    with pytest.raises(QuantizationError, match="fp cannot be part of a recipe"):
        check_recipe("fp+rtn", allow_float=True)
    assert method_chain("smoothquant+gptq") == method_chain(["smoothquant", "gptq"]) == ["smoothquant", "gptq"]
    # "fp" alone, where the baseline is not allowed, is an unknown method, not part of a recipe
    with pytest.raises(QuantizationError, match="unknown method 'fp'; valid: awq"):
        check_recipe("fp")


def test_recipe_names_are_written_without_spaces_and_never_name_an_empty_method():
    assert check_recipe("smoothquant + gptq") == check_recipe([" smoothquant", "gptq "]) == "smoothquant+gptq"
    assert display_name(" awq ") == "AWQ"
    for empty in ("", "awq+", "+gptq", "awq++gptq", [], ["awq", " "]):
        with pytest.raises(QuantizationError, match="names an empty method"):
            method_chain(empty)
    with pytest.raises(QuantizationError, match="a name or a list of names, got 3"):
        method_chain(3)


@pytest.mark.parametrize("chain, message", [
    (["gptq", "awq"], "gptq settles the weights"),
    (["omniquant", "rtn"], "omniquant settles the weights"),
    (["awq", "smoothquant"], "smoothquant reads plan-act statistics"),
    (["rtn", "rtn"], "names a method twice"),
    (["mixed", "rtn"], "mixed chooses each layer's bit widths"),
])
def test_recipes_that_cannot_compose_are_refused(chain, message):
    with pytest.raises(QuantizationError, match=message):
        check_composition([get_method(name) for name in chain])


def _model():
    return make_model(dtype=torch.float64)


def _runner(model):
    inner, calls = calibration_runner(model), []

    def run():
        calls.append(1)
        inner()

    return run, calls


def test_a_recipe_applies_each_method_to_the_model_the_previous_one_left(monkeypatch):
    """[awq, gptq]: GPTQ must see the weights AWQ scaled (and its recorded inputs after scaling)."""
    config = QuantConfig(predictor=QuantScheme(w_bits=4))
    model = _model()
    seen = {}
    gptq = METHODS["gptq"]
    original = gptq.transform

    def spy(self, model_, qconfig, calib, options):
        seen["weight"] = model_.predictor.blocks[0].attn.qkv.weight.detach().clone()
        return original(self, model_, qconfig, calib, options)

    monkeypatch.setattr(gptq, "transform", spy)
    before = model.predictor.blocks[0].attn.qkv.weight.detach().clone()
    run, calls = _runner(model)
    report = calibrate_and_quantize(model, ["awq", "gptq"], config, run)
    assert not torch.equal(seen["weight"], before)  # AWQ's scales reached GPTQ
    assert report["method"] == "awq+gptq" and len(calls) == 2  # inputs recorded anew for each method
    assert set(report["method_report"]) == {"awq", "gptq"}
    assert report["superseded_weight_qparams"]["gptq"]  # GPTQ's grid replaced AWQ's clip ratios


def test_a_one_method_recipe_equals_the_method():
    config = QuantConfig.uniform(w_bits=4)
    outputs = []
    for method in ("awq", ["awq"]):
        model = _model()
        run, _ = _runner(model)
        calibrate_and_quantize(model, method, config, run)
        outputs.append(model.predictor.blocks[0].attn.qkv.weight_quantizer(model.predictor.blocks[0].attn.qkv.weight))
    assert torch.equal(outputs[0], outputs[1])
