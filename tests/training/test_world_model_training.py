"""World-model training called directly, not through `wmquant train`: the cached latents of every
frame, the optimisers and what each trains, and the loop's steps (each step's gradient, the
learning-rate schedule, clipping, train and eval modes, logging and checkpoint steps, the anchor's
default reference, the samplers' seeds) and its validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from wmquant.data import load_dataset
from wmquant.data.transforms import to_model_input
from wmquant.errors import ConfigError
from wmquant.models.checkpoint import load_world_model
from wmquant.training import world_model as world_model_training
from wmquant.training.batches import EpisodeTensors, WindowSampler
from wmquant.training.state import cosine_lr
from wmquant.training.world_model import (LatentWindows, WorldModelTrainConfig, encode_all_frames, evaluate,
                                           make_optimizers, train_world_model)


def episodes(lengths=(5, 3), side=16, seed=0) -> EpisodeTensors:
    g = torch.Generator().manual_seed(seed)
    count, longest = len(lengths), max(lengths)
    return EpisodeTensors(
        visual=torch.randint(0, 256, (count, longest, 3, side, side), generator=g, dtype=torch.uint8),
        proprio=torch.zeros(count, longest, 2), actions=torch.zeros(count, longest, 2),
        states=torch.zeros(count, longest, 4), lengths=torch.tensor(lengths),
    )


@pytest.fixture(scope="module")
def wall():
    return load_world_model("wall")


def fresh_wall_model():
    """The shipped Wall model without its decoder (a model to train: these tests change its weights)."""
    model, _ = load_world_model("wall")
    model.decoder = None
    return model


@pytest.mark.parametrize("batch", [1, 4, 1024])
def test_every_frame_is_encoded_in_its_place_whatever_the_batch(wall, batch):
    model, config = wall
    data = episodes()
    img_size = config["model"]["img_size"]
    with torch.no_grad():
        latents = encode_all_frames(model, data, img_size, batch=batch)
        assert latents.shape[:2] == (2, 5) and latents.dtype == torch.float32
        for e in range(2):
            for t in range(5):
                frame = to_model_input(data.visual[e, t][None], img_size)
                torch.testing.assert_close(latents[e, t], model.encoder(model.resize_for_encoder(frame))[0])


def test_another_encoder_can_give_the_latents(wall):
    model, _ = wall
    other, _ = load_world_model("wall")
    with torch.no_grad():
        for p in other.encoder.parameters():
            p.mul_(0.5)
        data = episodes(lengths=(2,))
        mine, theirs = encode_all_frames(model, data, 64), encode_all_frames(model, data, 64, encoder=other.encoder)
        expected = other.encoder(model.resize_for_encoder(to_model_input(data.visual[0], 64)))
    torch.testing.assert_close(theirs[0], expected)
    assert not torch.allclose(mine, theirs)


@pytest.mark.parametrize("decoder, train_encoder", [(True, False), (False, False), (True, True), (False, True)])
def test_each_trained_part_has_its_optimiser_and_learning_rate(decoder, train_encoder):
    model, _ = load_world_model("wall")
    if not decoder:
        model.decoder = None
    model.train_encoder = train_encoder
    cfg = WorldModelTrainConfig(predictor_lr=1e-3, action_encoder_lr=2e-3, decoder_lr=3e-3, encoder_lr=4e-6,
                                weight_decay=0.05)
    optimizers = make_optimizers(model, cfg)

    def ids(*modules):
        return {id(p) for m in modules for p in m.parameters()}

    expected = [(torch.optim.AdamW, ids(model.predictor), 1e-3),
                (torch.optim.AdamW, ids(model.action_encoder, model.proprio_encoder), 2e-3)]
    if decoder:
        expected.append((torch.optim.Adam, ids(model.decoder), 3e-3))
    if train_encoder:
        expected.append((torch.optim.Adam, ids(model.encoder), 4e-6))
    assert len(optimizers) == len(expected)
    for optimizer, (kind, params, lr) in zip(optimizers, expected):
        assert type(optimizer) is kind
        (group,) = optimizer.param_groups
        assert {id(p) for p in group["params"]} == params
        assert group["lr"] == group["base_lr"] == lr  # the schedule scales base_lr
        assert group["weight_decay"] == (0.05 if kind is torch.optim.AdamW else 0)


@pytest.fixture(scope="module")
def wall_splits(wall_data):
    """Two training episodes and one validation episode: enough windows, few frames to encode."""
    splits = []
    for split, count in (("train", 2), ("val", 1)):
        full = EpisodeTensors.from_dataset(load_dataset("wall", str(wall_data), split=split))
        splits.append(EpisodeTensors(*(getattr(full, f.name)[:count] for f in dataclasses.fields(full))))
    return tuple(splits)


def _train(model, splits, *, val=True, **settings):
    """Train the model directly (not through the CLI) and return the logged entries."""
    train, validation = splits
    entries = []
    settings = {"steps": 2, "batch_size": 2, "log_every": 1, "val_batches": 1, **settings}
    cfg = WorldModelTrainConfig(**settings)
    train_world_model(model, train, validation if val else None, 64, cfg, log=entries.append, progress=False)
    return entries


def test_the_anchor_holds_the_encoder_to_itself_as_it_starts_by_default(wall_splits):
    model = fresh_wall_model()
    model.train_encoder = True
    entries = _train(model, wall_splits, encoder_lr=1e-2)
    anchor = [entry["train/encoder_anchor_loss"] for entry in entries]
    assert anchor[0] == pytest.approx(0.0, abs=1e-10) and anchor[-1] > 1e-6  # the copy stayed where it started
    with pytest.raises(ConfigError, match="reference_encoder"):
        train_world_model(model, *wall_splits, 64, WorldModelTrainConfig(steps=3, batch_size=4), progress=False,
                          start_step=1)


def test_validation_is_logged_only_with_a_validation_split(wall_splits):
    model = fresh_wall_model()
    without = _train(model, wall_splits, val=False)
    assert len(without) == 2 and not any(key.startswith("val/") for entry in without for key in entry)
    with_val = _train(model, wall_splits)
    assert all("val/z_loss" in entry for entry in with_val)


def test_the_learning_rate_warms_up_then_follows_the_cosine(wall_splits):
    model = fresh_wall_model()
    cfg = WorldModelTrainConfig(steps=6, batch_size=2, warmup_fraction=0.5, predictor_lr=1e-3)
    optimizers = make_optimizers(model, cfg)
    seen = []
    plain_step = optimizers[0].step

    def recording_step(*args, **kwargs):
        seen.append(optimizers[0].param_groups[0]["lr"])
        return plain_step(*args, **kwargs)

    optimizers[0].step = recording_step
    train_world_model(model, wall_splits[0], None, 64, cfg, progress=False, optimizers=optimizers)
    assert seen == pytest.approx([cosine_lr(step, 6, 3, 1e-3) for step in range(6)])
    assert seen[:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])  # 3 warm-up steps: half of 6


def test_gradient_clipping_reaches_the_predictor(wall_splits):
    moved = {}
    for clip in (0.0, 1e-12):
        model = fresh_wall_model()
        before = [p.detach().clone() for p in model.predictor.parameters()]
        _train(model, wall_splits, val=False, grad_clip=clip, weight_decay=0.0)
        moved[clip] = sum((p.detach() - b).abs().sum().item() for p, b in zip(model.predictor.parameters(), before))
    # Adam divides the gradient by its own scale, but not below its epsilon (1e-8): a gradient clipped
    # to a norm of 1e-12 barely moves the weights
    assert moved[0.0] > 0 and moved[1e-12] < 1e-3 * moved[0.0]


def test_every_step_trains_in_training_mode(wall_splits, monkeypatch):
    modes = []
    plain = world_model_training.losses_for_batch

    def recording(model, data, **kwargs):
        modes.append((torch.is_grad_enabled(), model.training))
        return plain(model, data, **kwargs)

    monkeypatch.setattr(world_model_training, "losses_for_batch", recording)
    model = fresh_wall_model()
    model.eval()  # as loaded: training must switch dropout on
    _train(model, wall_splits)
    assert [training for grad, training in modes if grad] == [True] * 2
    assert [training for grad, training in modes if not grad] == [False] * 2  # validation, in eval mode
    assert not model.training  # left in eval mode


def test_windows_are_drawn_afresh_when_a_run_resumes_and_apart_for_the_rollout_loss(wall_splits, monkeypatch):
    seeds = []

    class RecordingSampler(WindowSampler):
        def __init__(self, episodes, num_frames, frameskip, seed=0):
            seeds.append((num_frames, seed))
            super().__init__(episodes, num_frames, frameskip, seed=seed)

    monkeypatch.setattr(world_model_training, "WindowSampler", RecordingSampler)
    model = fresh_wall_model()
    cfg = WorldModelTrainConfig(steps=2, batch_size=2, rollout_steps=2, seed=5)
    train_world_model(model, wall_splits[0], None, 64, cfg, progress=False)
    first = list(seeds)
    seeds.clear()
    train_world_model(model, wall_splits[0], None, 64, cfg, progress=False, start_step=1)
    frames = model.num_hist + model.num_pred
    (train_frames, train_seed), (rollout_frames, rollout_seed) = first
    assert (train_frames, rollout_frames) == (frames, model.num_hist + 2)
    assert train_seed != rollout_seed  # the rollout loss sees other windows than teacher forcing
    assert seeds[0][1] not in (train_seed, rollout_seed) and seeds[1][1] not in (train_seed, rollout_seed)
    assert seeds[0][1] != seeds[1][1]


def test_each_step_follows_the_gradient_of_its_own_batch_alone(wall_splits, monkeypatch):
    # without zero_grad the gradients of earlier steps would add up; Adam's scale invariance hides
    # that in the losses, so each step's gradient is compared with its loss's, taken before backward
    model = fresh_wall_model()
    params = list(model.predictor.parameters())
    fresh, checked = [], []
    plain = world_model_training.losses_for_batch

    def losses_with_their_gradient(model, data, **kwargs):
        losses = plain(model, data, **kwargs)
        if torch.is_grad_enabled():
            fresh.append(torch.autograd.grad(losses["loss"], params, retain_graph=True, allow_unused=True))
        return losses

    monkeypatch.setattr(world_model_training, "losses_for_batch", losses_with_their_gradient)
    cfg = WorldModelTrainConfig(steps=3, batch_size=2, grad_clip=0.0)
    optimizers = make_optimizers(model, cfg)
    plain_step = optimizers[0].step

    def checked_step(*args, **kwargs):
        for param, expected in zip(params, fresh[-1]):
            torch.testing.assert_close(param.grad, torch.zeros_like(param) if expected is None else expected,
                                       rtol=1e-5, atol=1e-7)
        checked.append(True)
        return plain_step(*args, **kwargs)

    optimizers[0].step = checked_step
    train_world_model(model, wall_splits[0], None, 64, cfg, progress=False, optimizers=optimizers)
    assert len(checked) == 3


@pytest.mark.parametrize("steps, checkpoints", [(7, [3, 6]), (6, [3])])
def test_logs_every_few_steps_and_the_last_and_checkpoints_before_the_end(wall_splits, steps, checkpoints):
    model = fresh_wall_model()
    entries, saved = [], []
    cfg = WorldModelTrainConfig(steps=steps, batch_size=2, log_every=4)
    train_world_model(model, wall_splits[0], None, 64, cfg, log=entries.append, progress=False,
                      checkpoint=lambda step, optimizers: saved.append(step), checkpoint_every=3)
    assert [entry["step"] for entry in entries] == [0, 4, steps - 1]
    assert saved == checkpoints  # the finished model is saved by its caller, not as a checkpoint


def test_validation_reads_the_same_windows_every_time_and_averages_its_batches(wall_splits, monkeypatch):
    model = fresh_wall_model()
    sampler = WindowSampler(wall_splits[1], model.num_hist + model.num_pred, model.frameskip, seed=1)
    windows = LatentWindows(sampler, None, 64)
    cfg = WorldModelTrainConfig(val_batches=3, batch_size=2)
    first = evaluate(model, windows, cfg)
    windows.batch(2)  # the sampler moved on, as training would have
    assert evaluate(model, windows, cfg) == first and not model.training
    counter = iter(range(1, 4))
    monkeypatch.setattr(world_model_training, "losses_for_batch",
                        lambda model, data: {"z_loss": torch.tensor(float(next(counter)))})
    assert evaluate(model, windows, cfg) == {"val/z_loss": pytest.approx(2.0)}  # the mean of 1, 2 and 3
