"""plan-act statistics: recording, safetensors round trip, QuantWM key names, bad files."""

import pytest
import torch

from quant_toy import calibration_runner, make_inputs, make_model
from wmquant.errors import QuantizationError
from wmquant.quant import QuantConfig, QuantLinear, quantize_
from wmquant.quant.stats import ActStatsRecorder, canonical_stats_key, load_act_stats, save_act_stats


def test_recorder_keeps_running_channel_max_of_every_linear_input():
    model = make_model()
    seen = {}
    layer = model.predictor.blocks[1].mlp.fc2
    hook = layer.register_forward_pre_hook(lambda m, a: seen.setdefault("x", []).append(a[0].reshape(-1, a[0].shape[-1])))
    with ActStatsRecorder(model) as recorder:
        calibration_runner(model, calls=3)()
    hook.remove()
    stats = recorder.stats()
    expected = torch.cat(seen["x"]).abs().amax(dim=0)
    assert torch.equal(stats["predictor.blocks.1.mlp.fc2"], expected)
    assert len(stats) == 16  # 4 Linears x 2 blocks x (encoder, predictor); convs are not Linears
    assert recorder.calls["encoder.blocks.0.attn.qkv"] == 3
    assert not model.encoder.blocks[0].attn.qkv._forward_pre_hooks


def test_recorder_sees_quantized_linears_too():
    model = make_model()
    quantize_(model, QuantConfig.uniform(w_bits=8))
    assert isinstance(model.encoder.blocks[0].attn.qkv, QuantLinear)
    with ActStatsRecorder(model, prefixes=("encoder",)) as recorder:
        model(*make_inputs(model))
    assert set(recorder.stats()) == {f"encoder.blocks.{i}.{l}" for i in range(2)
                                     for l in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}


def test_save_load_round_trip(tmp_path):
    stats = {"encoder.blocks.0.attn.qkv": torch.rand(8), "predictor.blocks.0.mlp.fc1": torch.rand(5)}
    path = save_act_stats(tmp_path / "stats.safetensors", stats)
    loaded = load_act_stats(path)
    assert loaded.keys() == stats.keys()
    assert all(torch.equal(loaded[k], stats[k]) for k in stats)
    assert [p.name for p in tmp_path.iterdir()] == ["stats.safetensors"]


def test_missing_file_names_the_command(tmp_path):
    with pytest.raises(QuantizationError, match="wmquant plan-act"):
        load_act_stats(tmp_path / "absent.safetensors")


def test_non_finite_or_corrupt_statistics_refused(tmp_path):
    with pytest.raises(QuantizationError, match="NaN"):
        save_act_stats(tmp_path / "a.safetensors", {"x": torch.tensor([1.0, float("nan")])})
    assert not (tmp_path / "a.safetensors").exists()
    bad = tmp_path / "b.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(QuantizationError, match="cannot read"):
        load_act_stats(bad)
    torch.save({"encoder.base_model.blocks.0.attn.qkv": torch.tensor([1.0, float("inf")])}, tmp_path / "c.pt")
    with pytest.raises(QuantizationError, match="NaN/inf"):
        load_act_stats(tmp_path / "c.pt")


def test_quantwm_pickle_keys_are_mapped(tmp_path):
    raw = {
        "encoder.base_model.blocks.3.attn.qkv": torch.rand(4),
        "encoder.base_model.blocks.3.mlp.fc2": torch.rand(4),
        "predictor.transformer.layers.2.attn.to_qkv": torch.rand(4),
        "predictor.transformer.layers.2.attn.to_out.0": torch.rand(4),
        "predictor.transformer.layers.2.ff.net.1": torch.rand(4),
        "predictor.transformer.layers.2.ff.net.4": torch.rand(4),
    }
    torch.save(raw, tmp_path / "wm_act_scales_wall_x.pt")
    loaded = load_act_stats(tmp_path / "wm_act_scales_wall_x.pt")
    assert set(loaded) == {
        "encoder.blocks.3.attn.qkv", "encoder.blocks.3.mlp.fc2", "predictor.blocks.2.attn.qkv",
        "predictor.blocks.2.attn.proj", "predictor.blocks.2.mlp.fc1", "predictor.blocks.2.mlp.fc2",
    }
    assert torch.equal(loaded["predictor.blocks.2.attn.proj"], raw["predictor.transformer.layers.2.attn.to_out.0"])
    assert canonical_stats_key("predictor.transformer.layers.0.0.to_qkv") == "predictor.blocks.0.attn.qkv"
    assert canonical_stats_key("predictor.blocks.0.attn.qkv") == "predictor.blocks.0.attn.qkv"


def test_recorder_takes_only_modules_inside_the_named_parts():
    model = make_model()
    model.encoder_head = torch.nn.Linear(3, 3)  # "encoder_head" starts with "encoder" but is not inside it
    with ActStatsRecorder(model) as recorder:
        model.encoder_head(torch.ones(2, 3))
    assert "encoder_head" not in recorder.calls and "encoder.blocks.0.attn.qkv" in recorder.calls


def test_zero_and_single_channel_statistics_are_valid_and_paths_may_be_strings(tmp_path):
    stats = {"encoder.blocks.0.mlp.fc2": torch.zeros(4), "predictor.blocks.0.attn.proj": torch.tensor([2.5])}
    path = str(tmp_path / "stats.safetensors")  # a plain string path
    save_act_stats(path, stats)
    loaded = load_act_stats(path)
    assert torch.equal(loaded["encoder.blocks.0.mlp.fc2"], torch.zeros(4))
    assert loaded["predictor.blocks.0.attn.proj"].tolist() == [2.5]
    with pytest.raises(QuantizationError, match="non-empty 1-D"):
        save_act_stats(tmp_path / "empty.safetensors", {"encoder.blocks.0.mlp.fc2": torch.zeros(0)})


class _NotStatistics:
    pass


def test_a_pickle_that_is_not_plain_tensors_is_not_unpickled(tmp_path):
    path = tmp_path / "stats.pt"
    torch.save({"encoder.blocks.0.mlp.fc2": _NotStatistics()}, path)
    with pytest.raises(QuantizationError, match="cannot read activation statistics"):
        load_act_stats(path)
