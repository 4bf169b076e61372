"""Official DINO-WM runs: a run directory written in the official format (pickled upstream modules,
accelerate-wrapped optimizers, hydra.yaml) loads through the restricted unpickler and reproduces
upstream's computations; malicious or unknown pickled globals are refused without running."""

from __future__ import annotations

import json
import os
import sys
import pickle

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from wmquant.errors import CheckpointError, ConfigError
from wmquant.models import load_official_run, load_world_model, save_world_model

MODEL_NAME = "2024-05-01/10-11-12"  # hydra's date/time run folder, as plan.py's model_name
IMG_SIZE, NUM_HIST, FRAMESKIP, PROPRIO_DIM, ACTION_DIM = 64, 3, 5, 4, 2
PREDICTOR = {"depth": 2, "heads": 4, "dim_head": 16, "mlp_dim": 64}


@pytest.fixture(scope="module")
def dinov2_file(tmp_path_factory, reference):
    """A torch-hub ViT-S/14 state dict with random weights (the full 12-block layout)."""
    state = reference.random_dinov2_state(384, 12, 6, seed=7)
    path = tmp_path_factory.mktemp("hub") / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return path, state


def _perturbed(module: nn.Module, seed: int) -> nn.Module:
    """Random values everywhere (LayerNorms and biases start at 1 / 0), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=g) * 0.1)
    return module.eval()


def _hydra_config(base, **overrides) -> dict:
    config = {
        "ckpt_base_path": str(base),
        "img_size": IMG_SIZE,
        "frameskip": FRAMESKIP,
        "concat_dim": 1,
        "normalize_action": True,
        "action_emb_dim": 10,
        "num_action_repeat": 1,
        "proprio_emb_dim": 10,
        "num_proprio_repeat": 1,
        "num_hist": NUM_HIST,
        "num_pred": 1,
        "has_predictor": True,
        "has_decoder": True,
        "encoder": {"_target_": "models.dino.DinoV2Encoder", "name": "dinov2_vits14", "feature_key": "x_norm_patchtokens"},
        "predictor": {"_target_": "models.vit.ViTPredictor", **PREDICTOR, "dropout": 0.1, "emb_dropout": 0, "pool": "mean"},
        "decoder": {"_target_": "models.vqvae.VQVAE", "channel": 16, "n_embed": 32, "n_res_block": 2, "n_res_channel": 8, "quantize": False},
        "proprio_encoder": {"_target_": "models.proprio.ProprioceptiveEmbedding", "num_frames": 1, "tubelet_size": 1, "use_3d_pos": False},
        "action_encoder": {"_target_": "models.proprio.ProprioceptiveEmbedding", "num_frames": 1, "tubelet_size": 1, "use_3d_pos": False},
        "model": {"_target_": "models.visual_world_model.VWorldModel", "image_size": IMG_SIZE, "num_hist": NUM_HIST, "num_pred": 1},
        "env": {"name": "pusht"},
        "training": {"seed": 0, "epochs": 100, "batch_size": 32},
        "saved_folder": str(base / "outputs" / MODEL_NAME),
    }
    config.update(overrides)
    return config


def write_official_run(base, upstream, extra_entries=None, hydra_overrides=None, epoch=7):
    """Write `{base}/outputs/{MODEL_NAME}/` like DINO-WM's train.py; return the pickled modules."""
    upstream.install()
    try:
        torch.manual_seed(0)
        num_patches = (IMG_SIZE // 16) ** 2
        modules = {
            "predictor": _perturbed(
                upstream.ViTPredictor(num_patches=num_patches, num_frames=NUM_HIST, dim=404, dropout=0.1, emb_dropout=0.0, pool="mean", **PREDICTOR), 1
            ),
            "decoder": _perturbed(upstream.VQVAE(channel=16, n_res_block=2, n_res_channel=8, emb_dim=384, n_embed=32, quantize=False), 2),
            "action_encoder": _perturbed(upstream.ProprioceptiveEmbedding(num_frames=1, in_chans=ACTION_DIM * FRAMESKIP, emb_dim=10), 3),
            "proprio_encoder": _perturbed(upstream.ProprioceptiveEmbedding(num_frames=1, in_chans=PROPRIO_DIM, emb_dim=10), 4),
        }
        predictor_optimizer = torch.optim.AdamW(modules["predictor"].parameters(), lr=5e-4)
        modules["predictor"](torch.randn(1, num_patches, 404)).square().mean().backward()
        predictor_optimizer.step()  # optimizer state now holds tensors, as after training
        checkpoint = {
            "epoch": epoch,
            "predictor": modules["predictor"],
            "predictor_optimizer": upstream.AcceleratedOptimizer(predictor_optimizer),
            "decoder": modules["decoder"],
            "decoder_optimizer": upstream.AcceleratedOptimizer(torch.optim.Adam(modules["decoder"].parameters(), lr=3e-4)),
            "action_encoder": modules["action_encoder"],
            "proprio_encoder": modules["proprio_encoder"],
            **(extra_entries or {}),
        }
        run_dir = base / "outputs" / MODEL_NAME
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, run_dir / "checkpoints" / "model_latest.pth")
        torch.save(checkpoint, run_dir / "checkpoints" / f"model_{epoch}.pth")
        (run_dir / "hydra.yaml").write_text(yaml.safe_dump(_hydra_config(base, **(hydra_overrides or {}))))
    finally:
        upstream.uninstall()
    return modules


def _upstream_rollout(modules, dinov2_reference, dinov2_state, obs_0, act):
    """VWorldModel.rollout with the upstream modules and the reference DINOv2 (spec 3.2-3.10)."""
    b, n = obs_0["visual"].shape[:2]
    frames = F.interpolate(obs_0["visual"].flatten(0, 1), size=(56, 56), mode="bilinear", antialias=True)
    visual = dinov2_reference(dinov2_state, frames, heads=6).unflatten(0, (b, n))
    patches = visual.shape[2]

    def tile(embedding):
        return embedding[:, :, None, :].expand(-1, -1, patches, -1)

    def predict(z):
        t = z.shape[1]
        return modules["predictor"](z.flatten(1, 2)).unflatten(1, (t, patches))

    z = torch.cat([visual, tile(modules["proprio_encoder"](obs_0["proprio"])), tile(modules["action_encoder"](act[:, :n]))], dim=-1)
    for t in range(n, act.shape[1]):
        z_new = predict(z[:, -NUM_HIST:])[:, -1:].clone()
        z_new[..., -10:] = tile(modules["action_encoder"](act[:, t : t + 1]))
        z = torch.cat([z, z_new], dim=1)
    z = torch.cat([z, predict(z[:, -NUM_HIST:])[:, -1:]], dim=1)
    return z


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = {"visual": torch.rand(2, 1, 3, IMG_SIZE, IMG_SIZE, generator=g) * 2 - 1, "proprio": torch.randn(2, 1, PROPRIO_DIM, generator=g)}
    return obs, torch.randn(2, 4, ACTION_DIM * FRAMESKIP, generator=g)


def test_official_run_loads_and_reproduces_upstream(tmp_path, upstream, dinov2_file, reference):
    weights, dinov2_state = dinov2_file
    modules = write_official_run(tmp_path, upstream)
    assert "models.vit" not in sys.modules  # the stand-ins are gone: nothing to import
    model, cfg = load_official_run(tmp_path, MODEL_NAME, dinov2_weights=weights)
    assert not model.training
    assert (model.num_hist, model.frameskip, model.encoder_img_size) == (NUM_HIST, FRAMESKIP, 56)
    assert (cfg["img_size"], cfg["frameskip"], cfg["env"]["name"]) == (IMG_SIZE, FRAMESKIP, "pusht")  # hydra.yaml
    assert cfg["wmquant"]["epoch"] == 7 and cfg["wmquant"]["model"]["action_dim"] == ACTION_DIM
    assert cfg["wmquant"]["model"]["predictor"] == {**PREDICTOR, "dropout": 0.1, "emb_dropout": 0.0, "final_norm": True}

    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 2 * 16, 404, generator=g)
    latents = torch.randn(2, 3, 16, 384, generator=g)
    proprio, act = torch.randn(2, 3, PROPRIO_DIM, generator=g), torch.randn(2, 3, ACTION_DIM * FRAMESKIP, generator=g)
    obs, actions = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.predictor(tokens), modules["predictor"](tokens), atol=1e-5, rtol=1e-5)
        expected_images = modules["decoder"](latents)[0].unflatten(0, (2, 3))
        torch.testing.assert_close(model.decode_visual(latents), expected_images, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode_act(act), modules["action_encoder"](act), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(model.proprio_encoder(proprio), modules["proprio_encoder"](proprio), atol=1e-6, rtol=1e-6)
        _, z = model.rollout(obs, actions)
        expected_z = _upstream_rollout(modules, reference.dinov2, dinov2_state, obs, actions)
    assert z.shape == (2, 5, 16, 404)
    # float32 rounding of 12 encoder blocks (about 5e-5 at unit scale) grows through four
    # autoregressive predictor calls; a wrong weight or layout would differ by order 1.
    torch.testing.assert_close(z[:, 0], expected_z[:, 0], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(z, expected_z, atol=2e-3, rtol=1e-3)

    # The loaded run converts to a wmquant checkpoint with identical outputs.
    out = save_world_model(model, cfg["wmquant"]["model"], tmp_path / "converted", extra={"official_run": cfg["wmquant"]["run_dir"]})
    converted, _ = load_world_model(out)
    with torch.no_grad():
        assert torch.equal(converted.rollout(obs, actions)[1], z)


def test_epoch_selection_and_missing_files(tmp_path, upstream, dinov2_file):
    weights, _ = dinov2_file
    write_official_run(tmp_path, upstream, epoch=4)
    model, cfg = load_official_run(tmp_path, MODEL_NAME, model_epoch=4, dinov2_weights=weights)
    assert cfg["wmquant"]["checkpoint"].endswith("model_4.pth")
    with pytest.raises(CheckpointError, match=r"model_5\.pth: missing checkpoint file"):
        load_official_run(tmp_path, MODEL_NAME, model_epoch=5, dinov2_weights=weights)
    with pytest.raises(CheckpointError, match=r"outputs/nope/hydra\.yaml: missing"):
        load_official_run(tmp_path, "nope", dinov2_weights=weights)
    with pytest.raises(CheckpointError, match=r"pass dinov2_weights=.*dinov2_vits14_pretrain\.pth"):
        load_official_run(tmp_path, MODEL_NAME)


def test_truncated_checkpoint_is_refused(tmp_path, upstream, dinov2_file):
    write_official_run(tmp_path, upstream)
    path = tmp_path / "outputs" / MODEL_NAME / "checkpoints" / "model_latest.pth"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match=r"model_latest\.pth: cannot read the checkpoint, truncated or corrupt"):
        load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])


def test_config_that_disagrees_with_the_weights(tmp_path, upstream, dinov2_file):
    predictor = {"_target_": "models.vit.ViTPredictor", **PREDICTOR, "heads": 8}
    write_official_run(tmp_path, upstream, hydra_overrides={"predictor": predictor})
    with pytest.raises(CheckpointError, match="hydra.yaml says heads=8 but the weights have heads=4"):
        load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])
    write_official_run(tmp_path, upstream, hydra_overrides={"img_size": 96})  # 36 patches per frame
    with pytest.raises(CheckpointError, match="pos_embedding has 48 positions, not a multiple of 36 patches"):
        load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])
    write_official_run(tmp_path, upstream, hydra_overrides={"encoder": {"name": "resnet18"}})
    with pytest.raises(ConfigError, match="encoder 'resnet18' is not a DINOv2 preset"):
        load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])
    for key in ("proprio_emb_dim", "action_emb_dim"):
        write_official_run(tmp_path, upstream, hydra_overrides={key: 12})
        with pytest.raises(CheckpointError, match=f"hydra.yaml says {key}=12 but the weights have {key}=10"):
            load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])


class _RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, upstream, dinov2_file):
    marker = tmp_path / "pwned"
    # The payload is live: plain unpickling runs the command.
    pickle.loads(pickle.dumps(_RunsShellCommand(marker)))
    assert marker.exists()
    marker.unlink()

    write_official_run(tmp_path, upstream, extra_entries={"notes": _RunsShellCommand(marker)})
    with pytest.raises(CheckpointError, match=r"model_latest\.pth: refused to unpickle global '(posix|os)\.system'"):
        load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])
    assert not marker.exists()


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_other_forbidden_globals(tmp_path, upstream, dinov2_file):
    write_official_run(tmp_path, upstream, extra_entries={"x": _CallsEval()})
    with pytest.raises(CheckpointError, match=r"refused to unpickle global 'builtins\.eval'"):
        load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])


def test_unknown_upstream_class_is_refused(tmp_path, upstream, dinov2_file):
    class Backdoor(nn.Module):
        pass

    original_install = upstream.install

    def install_with_backdoor():
        original_install()
        Backdoor.__module__, Backdoor.__qualname__ = "models.vit", "Backdoor"
        sys.modules["models.vit"].Backdoor = Backdoor

    upstream.install = install_with_backdoor
    write_official_run(tmp_path, upstream, extra_entries={"extra_module": Backdoor()})
    with pytest.raises(CheckpointError, match=r"refused to unpickle global 'models\.vit\.Backdoor'"):
        load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])


def test_a_module_in_the_wrong_slot_is_refused(tmp_path, upstream, dinov2_file):
    modules = write_official_run(tmp_path, upstream)
    upstream.install()
    try:
        path = tmp_path / "outputs" / MODEL_NAME / "checkpoints" / "model_latest.pth"
        torch.save({"epoch": 1, "predictor": modules["decoder"]}, path)
    finally:
        upstream.uninstall()
    with pytest.raises(CheckpointError, match=r"'predictor' is models\.vqvae\.VQVAE, expected models\.vit\.ViTPredictor"):
        load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])


@pytest.mark.parametrize("overrides, error, match", [
    ({"concat_dim": 0}, ConfigError, r"hydra\.yaml: concat_dim=0 is not supported; wmquant implements concat_dim=1"),
    ({"encoder": {"name": "dinov2_vits14", "feature_key": "x_norm_clstoken"}}, ConfigError,
     r"encoder feature_key 'x_norm_clstoken' is not supported \(only x_norm_patchtokens\)"),
    ({"frameskip": 3}, CheckpointError, r"model_latest\.pth: action encoder input width 10 is not a multiple of frameskip 3"),
    ({"action_emb_dim": 12}, CheckpointError, r"action_emb_dim"),
])
def test_a_run_whose_settings_wmquant_cannot_honour_is_refused(tmp_path, upstream, dinov2_file, overrides, error, match):
    write_official_run(tmp_path, upstream, hydra_overrides=overrides)
    with pytest.raises(error, match=match):
        load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])


def test_a_run_missing_a_training_setting_names_it(tmp_path, upstream, dinov2_file):
    write_official_run(tmp_path, upstream)
    hydra_path = tmp_path / "outputs" / MODEL_NAME / "hydra.yaml"
    config = yaml.safe_load(hydra_path.read_text())
    del config["num_hist"]
    hydra_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"hydra\.yaml: missing training setting 'num_hist'"):
        load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])


def _resave(tmp_path, upstream, checkpoint):
    upstream.install()
    try:
        torch.save(checkpoint, tmp_path / "outputs" / MODEL_NAME / "checkpoints" / "model_latest.pth")
    finally:
        upstream.uninstall()


def test_a_checkpoint_without_a_predictor_is_refused(tmp_path, upstream, dinov2_file):
    modules = write_official_run(tmp_path, upstream)
    _resave(tmp_path, upstream, {"epoch": 3, "decoder": modules["decoder"]})
    with pytest.raises(CheckpointError, match=r"model_latest\.pth: expected DINO-WM's checkpoint dict with a 'predictor' entry"):
        load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])


def test_a_decoder_trained_with_quantize_is_refused_and_a_run_without_decoder_loads(tmp_path, upstream, dinov2_file):
    modules = write_official_run(tmp_path, upstream)
    entries = {"epoch": 3, **{k: modules[k] for k in ("predictor", "action_encoder", "proprio_encoder")}}
    modules["decoder"].quantize = True
    _resave(tmp_path, upstream, {**entries, "decoder": modules["decoder"]})
    with pytest.raises(CheckpointError, match="the decoder was trained with quantize=True"):
        load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])
    _resave(tmp_path, upstream, entries)
    model, cfg = load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])
    assert model.decoder is None and cfg["wmquant"]["model"]["decoder"] is None and cfg["wmquant"]["epoch"] == 3


def test_an_official_run_plans_from_the_command_line(tmp_path, upstream, dinov2_file, capsys):
    """`wmquant plan ckpt_base_path=... model_name=<hydra run> dinov2_weights=... dataset_path=...`:
    the official PushT run (num_hist 3, frameskip 5) plans on goals from a dataset in the official
    layout, with the dataset's normalisation."""
    from wmquant.cli import main
    from wmquant.data.generate import generate_dataset

    write_official_run(tmp_path, upstream)
    dataset = tmp_path / "pusht_noise"
    generate_dataset("pusht", dataset, episodes=4, seed=0, steps=40, workers=1, progress=False)
    out = tmp_path / "plan_out"
    tiny = ["n_evals=2", "planner.max_iter=1", "planner.sub_planner.num_samples=6", "planner.sub_planner.topk=2",
            "planner.sub_planner.opt_steps=1", "save_plots=false", "engine.device=cpu"]
    official = [f"ckpt_base_path={tmp_path}", f"model_name={MODEL_NAME}", f"dinov2_weights={dinov2_file[0]}"]
    code = main(["plan", "--config-name", "plan_pusht.yaml", *official, f"dataset_path={dataset}", f"output_dir={out}", *tiny])
    err = capsys.readouterr().err
    assert code == 0, err
    logs = [json.loads(line) for line in (out / "logs.json").read_text().splitlines()]
    assert logs[0]["step"] == 1 and 0.0 <= logs[0]["mpc/success_rate"] <= 1.0
    # without the dataset there are no normalisation statistics: one line, exit 2
    code = main(["plan", "--config-name", "plan_pusht.yaml", *official, f"output_dir={tmp_path / 'other'}", *tiny])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "set dataset_path=DIR" in err and len(err.splitlines()) == 1


def test_a_record_keeps_what_the_pickle_gives_it_and_runs_nothing():
    """Pickle opcodes that fill an object (NEWOBJ's arguments, APPENDS, SETITEMS, BUILD) land in the
    inert record; a pickled defaultdict becomes a plain dict without its factory being called."""
    import collections
    import io

    from wmquant.models.official import ForbiddenGlobal, PickledRecord, RestrictedUnpickler

    def load(data: bytes):
        return RestrictedUnpickler(io.BytesIO(data)).load()

    # protocol 2, by hand: GLOBAL ModuleList, NEWOBJ with args (7,), APPENDS 1 2, SETITEMS 3: 4, BUILD {'p': 5}
    data = (b"\x80\x02ctorch.nn.modules.container\nModuleList\nK\x07\x85\x81"
            b"(K\x01K\x02e(K\x03K\x04u}X\x01\x00\x00\x00pK\x05sb.")
    record = load(data)
    assert isinstance(record, PickledRecord) and record.class_path == "torch.nn.modules.container.ModuleList"
    assert (record.args, record.kwargs, record.items, record.state) == ((7,), {}, [1, 2, (3, 4)], {"p": 5})
    # APPEND: the C unpickler calls extend for it too, when the object has extend (PEP 307)
    single = load(b"\x80\x02ctorch.nn.modules.container\nSequential\n)\x81K\x09a.")
    assert single.items == [9] and single.state is None and single.args == ()
    plain = load(pickle.dumps(collections.defaultdict(list, {"a": [1]}), protocol=2))
    assert plain == {"a": [1]} and type(plain) is dict
    # protocol 2 spells Python 3's builtins the Python 2 way (__builtin__.set): translated, then allowed
    assert b"__builtin__" in pickle.dumps({1, 2}, protocol=2) and load(pickle.dumps({1, 2}, protocol=2)) == {1, 2}
    with pytest.raises(ForbiddenGlobal) as refused:
        load(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.")
    assert str(refused.value) == refused.value.path == "os.system"


def test_heads_that_cannot_split_the_qkv_rows_are_refused(tmp_path, upstream, dinov2_file):
    modules = write_official_run(tmp_path, upstream)
    attention = modules["predictor"].transformer.layers[0][0]
    rows = attention.to_qkv.weight.shape[0]  # 3 x 4 heads x 16
    for heads, message in ((3, f"cannot split to_qkv of {rows} rows into 3 x 3 heads"),  # 192 = 12 x 16 rows
                           (0, f"cannot split to_qkv of {rows} rows into 3 x 0 heads"),
                           # one head splits any multiple of 3: the weights load, and hydra.yaml's 4 disagrees
                           (1, "hydra.yaml says heads=4 but the weights have heads=1")):
        attention.heads = heads
        _resave(tmp_path, upstream, {"epoch": 3, **modules})
        with pytest.raises(CheckpointError, match=message):
            load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])


def test_settings_that_older_runs_leave_out_take_dino_wm_defaults(tmp_path, upstream, dinov2_file):
    """A hydra.yaml without concat_dim or the repeat counts, and a decoder pickled without its
    `quantize` attribute, load with DINO-WM's defaults (concat_dim 1, one repeat, no quantizer)."""
    modules = write_official_run(tmp_path, upstream)
    hydra_path = tmp_path / "outputs" / MODEL_NAME / "hydra.yaml"
    hydra = yaml.safe_load(hydra_path.read_text())
    for key in ("concat_dim", "num_proprio_repeat", "num_action_repeat"):
        del hydra[key]
    hydra_path.write_text(yaml.safe_dump(hydra))
    del modules["decoder"].quantize
    _resave(tmp_path, upstream, {"epoch": 3, **modules})
    model, cfg = load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])
    assert model.decoder is not None
    assert (cfg["wmquant"]["model"]["num_proprio_repeat"], cfg["wmquant"]["model"]["num_action_repeat"]) == (1, 1)
    # the action width per env step is an integer, as a wmquant config writes it
    assert cfg["wmquant"]["model"]["action_dim"] == ACTION_DIM and type(cfg["wmquant"]["model"]["action_dim"]) is int


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_a_torchscript_archive_is_refused_by_name(tmp_path, upstream, dinov2_file):
    write_official_run(tmp_path, upstream)
    path = tmp_path / "outputs" / MODEL_NAME / "checkpoints" / "model_latest.pth"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointError, match=r"model_latest\.pth: a TorchScript archive, not a DINO-WM checkpoint"):
        load_official_run(tmp_path, MODEL_NAME, dinov2_weights=dinov2_file[0])
