"""`wmquant train` end to end on the CPU: pretrain a tiny encoder, train a tiny world model, save,
load by path, and plan with it; resume continues where a run stopped. `model.train_encoder`: the
encoder trained with the world model at `training.encoder_lr`, its prediction targets detached
(DINO-WM's semantics), its frame-to-frame distances and its tokens' common position held to the
pretrained encoder's by the anchor."""

from __future__ import annotations

import json

import pytest
import torch

from safetensors.torch import load_file

from wmquant.cli import main
from wmquant.errors import ConfigError
from wmquant.models.checkpoint import load_world_model
from wmquant.training.encoder import latent_distance
from wmquant.training.world_model import WorldModelTrainConfig, encoder_anchor_loss

TINY = [
    "model.img_size=32", "model.encoder.dim=32", "model.encoder.depth=1", "model.encoder.heads=2", "model.encoder.out_dim=16",
    "model.predictor.depth=1", "model.predictor.heads=2", "model.predictor.dim_head=8", "model.predictor.mlp_dim=32",
    "model.decoder.channel=16", "model.decoder.n_res_block=1", "model.decoder.n_res_channel=8",
    "model.decoder.upsample_stride=2", "model.decoder.decode_stride=4",
    "encoder_pretrain.batch_size=8", "training.batch_size=8", "training.log_every=1", "training.val_batches=1",
    "device=cpu",
]


def _train(data, out, steps):
    return main(["train", "--config-name", "train_wall.yaml", f"dataset_path={data}", f"output_dir={out}",
                 f"encoder_pretrain.steps={steps}", f"training.steps={steps}", "checkpoint_every=2", *TINY])


def test_train_end_to_end_and_plan(wall_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(wall_data, out, 3) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["train_episodes"] == 9 and summary["val_episodes"] == 1
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {entry["stage"] for entry in log} == {"encoder", "world_model"}
    assert all(torch.isfinite(torch.tensor(e["train/z_loss"])) for e in log if "train/z_loss" in e)
    model, cfg = load_world_model(out / "model")
    assert cfg["planning"]["env"] == "wall" and cfg["planning"]["frameskip"] == 5
    # the frozen encoder in the world model is the pretrained one, bit for bit
    encoder = load_file(str(out / "encoder" / "encoder.safetensors"))
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, encoder[name]), name
    assert main(["plan", "--config-name", "plan_wall.yaml", f"model_name={out / 'model'}", "n_evals=2",
                 "planner.max_iter=1", "planner.sub_planner.num_samples=8", "planner.sub_planner.topk=2",
                 "planner.sub_planner.opt_steps=1", f"output_dir={tmp_path / 'plan'}", "save_plots=false"]) == 0
    assert (tmp_path / "plan" / "result.json").exists()


def test_training_resumes_from_its_checkpoint(wall_data, tmp_path):
    out = tmp_path / "run"
    assert _train(wall_data, out, 3) == 0
    first = (out / "model" / "model.safetensors").read_bytes()
    # a longer run in the same directory continues from step 3 of the world-model stage checkpoint
    # (the encoder stage is complete and is not redone)
    assert (out / "checkpoints" / "world_model" / "trainer_state.safetensors").exists()
    encoder_before = (out / "encoder" / "encoder.safetensors").read_bytes()
    assert _train(wall_data, out, 5) == 0
    assert (out / "encoder" / "encoder.safetensors").read_bytes() == encoder_before
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    wm_steps = [e["step"] for e in log if e["stage"] == "world_model" and "train/loss" in e]
    assert wm_steps[-1] == 4 and 2 in wm_steps[len(wm_steps) // 2:], wm_steps
    assert (out / "model" / "model.safetensors").read_bytes() != first


def test_train_refuses_missing_paths(tmp_path, capsys):
    assert main(["train", "--config-name", "train_wall.yaml", f"output_dir={tmp_path}"]) == 2
    assert "dataset_path" in capsys.readouterr().err


def test_train_with_a_missing_dataset_leaves_nothing_behind(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config-name", "train_wall.yaml", f"dataset_path={tmp_path / 'absent'}", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "absent" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_train_with_the_rollout_loss(wall_data, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--config-name", "train_wall.yaml", f"dataset_path={wall_data}", f"output_dir={out}",
                 "encoder_pretrain.steps=2", "training.steps=2", "training.rollout_steps=2", *TINY]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    rollout = [e["train/rollout_loss"] for e in log if "train/rollout_loss" in e]
    assert len(rollout) == 2 and all(torch.isfinite(torch.tensor(rollout)))
    assert all(e["train/loss"] > e["train/z_loss"] + e["train/decoder_recon_loss"] for e in log if "train/rollout_loss" in e)


def test_encoder_output_scale_multiplies_the_world_models_visual_latent(wall_data, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--config-name", "train_wall.yaml", f"dataset_path={wall_data}", f"output_dir={out}",
                 "encoder_pretrain.steps=2", "training.steps=1", "encoder_output_scale=4.0", *TINY]) == 0
    model, _ = load_world_model(out / "model")
    reference, _ = load_world_model(out / "model")
    reference.encoder.load_state_dict(load_file(str(out / "encoder" / "encoder.safetensors")))  # unit variance
    frames = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(frames), 4.0 * reference.encoder(frames), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", ["0", "-1.5", "true"])
def test_encoder_output_scale_must_be_positive(wall_data, tmp_path, capsys, value):
    out = tmp_path / "run"
    assert main(["train", "--config-name", "train_wall.yaml", f"dataset_path={wall_data}", f"output_dir={out}",
                 f"encoder_output_scale={value}", *TINY]) == 2
    assert "encoder_output_scale" in capsys.readouterr().err
    assert not out.exists()


def test_a_world_model_without_decoder_trains_on_cached_latents_alone(wall_data, tmp_path, monkeypatch):
    from wmquant.training.batches import WindowSampler

    gathered = []
    original = WindowSampler.gather

    def spy(self, episode, start, img_size, visual=True):
        gathered.append(visual)
        return original(self, episode, start, img_size, visual=visual)

    monkeypatch.setattr(WindowSampler, "gather", spy)
    out = tmp_path / "run"
    tiny = [item for item in TINY if not item.startswith("model.decoder.")]
    assert main(["train", "--config-name", "train_wall.yaml", f"dataset_path={wall_data}", f"output_dir={out}",
                 "encoder_pretrain.steps=1", "training.steps=2", "model.decoder=null", "model.encoder_img_size=32",
                 *tiny]) == 0
    model, _ = load_world_model(out / "model")
    assert model.decoder is None
    # no frame is read for the world model: the frozen encoder's latents are cached once
    assert gathered and not any(gathered)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [e for e in log if "train/z_loss" in e]
    assert losses and all(e["train/decoder_recon_loss"] == 0.0 and e["train/loss"] == e["train/z_loss"] for e in losses)


def test_the_anchor_is_the_relative_squared_error_of_every_distance_and_of_the_common_shift():
    g = torch.Generator().manual_seed(0)
    windows = 4  # with 3, the windows two apart are also neighbours
    reference = torch.randn(windows, 4, 5, 6, generator=g) + 2.0
    moved = reference + 0.3 * torch.randn(windows, 4, 5, 6, generator=g)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    # every two frames of a window, then the first frames of neighbouring windows
    def distances(z):
        within = [latent_distance(z[b, i][None], z[b, j][None]) for b in range(windows) for i, j in pairs]
        across = [latent_distance(z[b, 0][None], z[(b - 1) % windows, 0][None]) for b in range(windows)]
        return torch.cat(within + across)

    d, d_ref = distances(moved), distances(reference)
    shift = (moved - reference).mean(dim=(0, 1))  # (tokens, channels)
    expected = (((d - d_ref) ** 2).mean() + (shift ** 2).sum(-1).mean()) / (d_ref ** 2).mean()
    torch.testing.assert_close(encoder_anchor_loss(moved, reference), expected)
    assert encoder_anchor_loss(reference, reference).item() == pytest.approx(0.0, abs=1e-6)
    # all tokens sliding together keep every distance; the anchor sees it
    offset = torch.randn(5, 6, generator=g)
    slid = encoder_anchor_loss(reference + offset, reference).item()
    assert slid == pytest.approx(((offset ** 2).sum(-1).mean() / (d_ref ** 2).mean()).item(), rel=1e-5)
    # a rotation about the tokens' mean keeps every distance and their common position: the tokens
    # may move relative to one another, the geometry may not
    mean = reference.mean(dim=(0, 1))
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    rotated = (reference - mean) @ rotation + mean
    assert encoder_anchor_loss(rotated, reference).item() == pytest.approx(0.0, abs=1e-5)
    # scale-free: the same relative change costs the same at any latent scale
    torch.testing.assert_close(encoder_anchor_loss(10 * moved, 10 * reference), encoder_anchor_loss(moved, reference))
    centred = reference - mean
    assert encoder_anchor_loss(2 * centred, centred).item() == pytest.approx(1.0, rel=1e-5)
    # bf16 latents (the autocast of training) are compared in float32; the reference gets no gradient
    half = encoder_anchor_loss(moved.bfloat16(), reference.bfloat16())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, encoder_anchor_loss(moved.bfloat16().float(), reference.bfloat16().float()))
    trained, pretrained = moved.clone().requires_grad_(True), reference.clone().requires_grad_(True)
    encoder_anchor_loss(trained, pretrained).backward()
    assert pretrained.grad is None and trained.grad.abs().sum() > 0


def _train_with(data, out, *overrides):
    return main(["train", "--config-name", "train_wall.yaml", f"dataset_path={data}", f"output_dir={out}",
                 "encoder_pretrain.steps=2", *TINY, *overrides])


def _drift(run, frames):
    """The anchor between the world model's encoder and the pretrained one, on fixed frames."""
    model, _ = load_world_model(run / "model")
    pretrained, _ = load_world_model(run / "model")
    pretrained.encoder.load_state_dict(load_file(str(run / "encoder" / "encoder.safetensors")))
    with torch.no_grad():
        return encoder_anchor_loss(model.encoder(frames)[None], pretrained.encoder(frames)[None]).item()


def test_train_encoder_trains_it_and_the_anchor_holds_its_geometry(wall_data, tmp_path):
    frames = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    runs = {}
    for name, overrides in {
        "frozen": [],
        "free": ["model.train_encoder=true", "training.encoder_lr=3e-3", "training.encoder_anchor_weight=0"],
        "anchored": ["model.train_encoder=true", "training.encoder_lr=3e-3", "training.encoder_anchor_weight=30"],
    }.items():
        runs[name] = tmp_path / name
        assert _train_with(wall_data, runs[name], "training.steps=8", *overrides) == 0
    assert _drift(runs["frozen"], frames) == 0.0
    free, anchored = _drift(runs["free"], frames), _drift(runs["anchored"], frames)
    assert free > 0 and anchored > 0, (free, anchored)  # both encoders moved
    assert anchored < 0.5 * free, (free, anchored)
    log = [json.loads(line) for line in (runs["anchored"] / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "train/encoder_anchor_loss" in e]
    assert len(steps) == 8 and steps[0]["train/encoder_anchor_loss"] == pytest.approx(0.0, abs=1e-6)
    assert all(e["train/loss"] == pytest.approx(e["train/z_loss"] + e["train/decoder_recon_loss"]
                                                + 30 * e["train/encoder_anchor_loss"], rel=1e-5) for e in steps)
    # the saved model plans with a frozen encoder, and says how it was trained
    model, cfg = load_world_model(runs["anchored"] / "model")
    assert cfg["model"]["train_encoder"] is False and model.train_encoder is False
    assert cfg["training"]["encoder_trained_with_world_model"] is True


def test_train_encoder_with_the_rollout_loss_and_resumed(wall_data, tmp_path):
    out = tmp_path / "run"
    common = ["model.train_encoder=true", "training.encoder_lr=1e-3", "training.rollout_steps=2", "checkpoint_every=2"]
    assert _train_with(wall_data, out, "training.steps=3", *common) == 0
    assert _train_with(wall_data, out, "training.steps=5", *common) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in log if "train/rollout_loss" in e]
    assert steps[-1] == 4 and steps.count(2) == 2, steps  # the second run continued from step 2's checkpoint
    # a resumed run is anchored to the pretrained encoder, not to its own checkpointed one
    resumed = [e for e in log if "train/encoder_anchor_loss" in e and e["step"] == 2]
    assert resumed[-1]["train/encoder_anchor_loss"] > 0


def test_the_cached_reference_latents_train_as_the_reference_encoder_does(wall_data, tmp_path):
    logs = {}
    for cache in ("true", "false"):
        out = tmp_path / cache
        assert _train_with(wall_data, out, "model.train_encoder=true", "training.encoder_lr=3e-3", "training.steps=4",
                           "training.log_every=1", f"training.cache_latents={cache}") == 0
        logs[cache] = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()
                       if "train/encoder_anchor_loss" in line]
    assert len(logs["true"]) == len(logs["false"]) == 4
    assert logs["true"][-1]["train/encoder_anchor_loss"] > 0  # the encoder moved, and the anchor saw it
    for cached, encoded in zip(logs["true"], logs["false"]):
        for key in ("train/encoder_anchor_loss", "train/z_loss", "val/z_loss"):
            assert cached[key] == pytest.approx(encoded[key], rel=1e-4, abs=1e-7), (key, cached, encoded)


def test_encoder_settings_are_checked(wall_data, tmp_path, capsys):
    with pytest.raises(ConfigError, match="encoder_lr"):
        WorldModelTrainConfig(encoder_lr=-1e-4)
    with pytest.raises(ConfigError, match="encoder_anchor_weight"):
        WorldModelTrainConfig(encoder_anchor_weight=True)
    out = tmp_path / "run"
    assert _train_with(wall_data, out, "model.train_encoder=true", "training.encoder_anchor_weight=-1") == 2
    err = capsys.readouterr().err.strip()
    assert "encoder_anchor_weight" in err and len(err.splitlines()) == 1
    assert not out.exists()  # refused before the encoder stage, with nothing written


def test_latents_passed_with_their_graph_train_the_encoder_through_the_context_frames_only():
    model, _ = load_world_model("wall")
    model.decoder = None
    n = model.num_hist
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, n + 1, model.predictor.num_patches, model.visual_dim, generator=g, requires_grad=True)
    losses = model({"visual_latent": latents, "proprio": torch.randn(2, n + 1, 2, generator=g)},
                   torch.randn(2, n + 1, 10, generator=g))
    losses["z_loss"].backward()
    # DINO-WM detaches the prediction targets: the encoder learns from the frames it predicts from
    assert latents.grad[:, :n].abs().sum() > 0
    assert latents.grad[:, n:].abs().sum() == 0
