"""Goal files: frameless trajectories next to a model, so that PushT planning needs no dataset; they
give the same planning episodes as the dataset they were cut from; bad files fail in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from wmquant.cli import main
from wmquant.data import generate_dataset, load_dataset
from wmquant.data.goals import GOALS_FILE, GoalTrajectories, goal_file_from_dataset
from wmquant.envs import make_batch
from wmquant.errors import DatasetError
from wmquant.models.checkpoint import model_directory, shipped_model_names
from wmquant.planning.episodes import _draw_segment, _episode_rng, make_episodes

TINY = ("n_evals=2 planner.max_iter=1 planner.sub_planner.num_samples=8 planner.sub_planner.topk=2 "
        "planner.sub_planner.opt_steps=1 save_plots=false").split()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("goals") / "pusht"
    generate_dataset("pusht", out, episodes=10, seed=3, steps=60, workers=1, progress=False, render_size=16, video="pth")
    return out


def test_goal_file_holds_the_datasets_trajectories(dataset, tmp_path):
    path = goal_file_from_dataset(dataset, "pusht", tmp_path / GOALS_FILE, train_episodes=4)
    for split, count in (("val", 1), ("train", 4)):
        goals, data = GoalTrajectories(path, split, "pusht"), load_dataset("pusht", dataset, split)
        assert len(goals) == count
        for i in range(count):
            expected, got = data.trajectory(i), goals.trajectory(i)
            assert torch.equal(got.states, expected.states) and torch.equal(got.actions, expected.actions)
            assert got.env_info == expected.env_info and goals.seq_length(i) == data.seq_length(i)
        assert torch.equal(goals.normalization.action_std, data.normalization.action_std)
    assert GoalTrajectories(path, "val", "pusht").source["seed"] == 3
    assert GoalTrajectories(path, "val", "pusht").env_name == "pusht"  # the dataset interface's env
    with pytest.raises(DatasetError, match="no frames"):
        GoalTrajectories(path, "val", "pusht").episode(0)


def test_goal_file_gives_the_same_planning_episodes_as_its_dataset(dataset, tmp_path):
    path = goal_file_from_dataset(dataset, "pusht", tmp_path / GOALS_FILE, train_episodes=100)
    seeds = [7, 8, 9]
    made = []
    for source in (load_dataset("pusht", dataset, "train"), GoalTrajectories(path, "train", "pusht")):
        env = make_batch("pusht", len(seeds), render_size=16, workers=0)
        made.append(make_episodes(env, "pusht", seeds, "dset", goal_H=5, frameskip=5, dataset=source))
    np.testing.assert_array_equal(made[0].init_states, made[1].init_states)
    np.testing.assert_array_equal(made[0].goal_states, made[1].goal_states)
    np.testing.assert_array_equal(made[0].obs_g["visual"], made[1].obs_g["visual"])


def test_missing_corrupt_or_foreign_goal_files_are_refused(dataset, tmp_path):
    path = goal_file_from_dataset(dataset, "pusht", tmp_path / GOALS_FILE, train_episodes=2)
    with pytest.raises(DatasetError, match="missing"):
        GoalTrajectories(tmp_path / "absent.safetensors", "val", "pusht")
    with pytest.raises(DatasetError, match="holds 'pusht' trajectories; expected 'wall'"):
        GoalTrajectories(path, "val", "wall")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DatasetError, match="corrupt"):
        GoalTrajectories(corrupt, "val", "pusht")


def _rewritten(path, out, change):
    """A copy of the goal file `path` whose tensors and metadata `change(tensors, metadata)` edits."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    change(tensors, metadata)
    save_file(tensors, str(out), metadata=metadata)
    return out


def _nan_states(tensors, metadata):
    tensors["val/states"][0, 0] = float("nan")


@pytest.mark.parametrize("change, message", [
    (lambda t, m: m.update(format="something-else"), "has format 'something-else'; expected"),
    (lambda t, m: [t.pop(k) for k in ("val/states", "val/actions", "val/lengths")], "has no 'val' split"),
    (lambda t, m: t.update({"val/lengths": t["val/lengths"] + 1}), "is corrupt: split 'val' has inconsistent shapes"),
    (lambda t, m: m.update({"val/env_infos": "[]"}), "is corrupt: split 'val' has inconsistent shapes"),
    (_nan_states, "is corrupt: NaN or inf in split 'val'"),
    (lambda t, m: m.pop("normalization"), "is corrupt: KeyError"),
])
def test_a_goal_file_with_damaged_content_names_what_is_wrong(dataset, tmp_path, change, message):
    path = goal_file_from_dataset(dataset, "pusht", tmp_path / GOALS_FILE, train_episodes=2)
    damaged = _rewritten(path, tmp_path / "damaged.safetensors", change)
    with pytest.raises(DatasetError, match=message) as caught:
        GoalTrajectories(damaged, "val", "pusht")
    assert str(damaged) in str(caught.value) and "\n" not in str(caught.value)


def test_a_goal_file_split_must_be_train_or_val(dataset, tmp_path):
    path = goal_file_from_dataset(dataset, "pusht", tmp_path / GOALS_FILE, train_episodes=2)
    with pytest.raises(DatasetError, match="goal file split must be one of train, val, got 'test'"):
        GoalTrajectories(path, "test", "pusht")


needs_pusht = pytest.mark.skipif("pusht" not in shipped_model_names(), reason="the shipped PushT model is missing")


@needs_pusht
def test_pusht_plans_out_of_the_box_with_no_dataset_path(tmp_path, capsys):
    code = main(["plan", "--config-name", "plan_pusht.yaml", "model_name=pusht", *TINY, f"output_dir={tmp_path / 'run'}"])
    assert code == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["episodes"]["goal_source"] == "dset" and len(result["success_rate_by_iter"]) == 1
    breakdown = result["failure_breakdown"]
    assert breakdown["failed"] == round(2 * (1 - result["final_success_rate"]))
    assert "goals that need the block pushed" in capsys.readouterr().out


@needs_pusht
@pytest.mark.parametrize("damage, fragment", [("delete", "is missing"), ("truncate", "is corrupt")])
def test_a_missing_or_corrupt_shipped_goal_file_is_one_line_and_exit_2(damage, fragment, tmp_path, capsys):
    model_dir = tmp_path / "pusht_copy"
    shutil.copytree(model_directory("pusht"), model_dir)
    goals = model_dir / GOALS_FILE
    if damage == "delete":
        goals.unlink()
    else:
        goals.write_bytes(goals.read_bytes()[:1000])
    code = main(["plan", "--config-name", "plan_pusht.yaml", f"model_name={model_dir}", *TINY, f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # nothing is left behind


@needs_pusht
def test_a_dataset_of_another_env_is_one_line_and_exit_2(tmp_path, capsys):
    wall = tmp_path / "wall"
    generate_dataset("wall", wall, episodes=4, seed=0, steps=6, workers=1, progress=False)
    code = main(["plan", "--config-name", "plan_pusht.yaml", "model_name=pusht", f"dataset_path={wall}", *TINY,
                 f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "holds a 'wall' dataset" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_random_action_goals_replay_random_normalised_actions_from_a_dataset_state(dataset):
    data = load_dataset("pusht", dataset, "train")
    seeds = [11, 12, 13, 14]
    env = make_batch("pusht", len(seeds), render_size=16, workers=0)
    episodes = make_episodes(env, "pusht", seeds, "random_action", goal_H=5, frameskip=5, dataset=data)
    replayed = make_episodes(env, "pusht", seeds, "dset", goal_H=5, frameskip=5, dataset=data)
    # the same segments (the same draws), so the same starts, but other actions
    np.testing.assert_array_equal(episodes.init_states, replayed.init_states)
    assert episodes.gt_actions.shape == (4, 25, 2) and not np.allclose(episodes.gt_actions, replayed.gt_actions)
    normalised = (episodes.gt_actions - data.normalization.action_mean.numpy()) / data.normalization.action_std.numpy()
    assert abs(normalised.mean()) < 0.2 and 0.8 < normalised.std() < 1.2  # randn, as upstream's randn_like
    check = make_batch("pusht", len(seeds), render_size=16, workers=0)
    check.update_env(episodes.env_infos)
    _, states = check.rollout(episodes.init_states, episodes.gt_actions)
    np.testing.assert_allclose(episodes.goal_states, states[:, -1], rtol=0, atol=1e-9)
    again = make_episodes(env, "pusht", seeds, "random_action", goal_H=5, frameskip=5, dataset=data)
    np.testing.assert_array_equal(again.gt_actions, episodes.gt_actions)


def test_episodes_keep_the_given_states_so_planning_resets_to_them_once(dataset):
    """Upstream's state_0 is the dataset's (or the sampled) state, and planning's reset to it takes the
    env's one 10 ms settle step once: the agent starts v x 0.01 px on, not 2 v x 0.01."""
    data = load_dataset("pusht", dataset, "train")
    seeds = [21, 22, 23]
    env = make_batch("pusht", len(seeds), render_size=16, workers=0)
    episodes = make_episodes(env, "pusht", seeds, "dset", goal_H=5, frameskip=5, dataset=data)
    for row, seed in enumerate(seeds):
        traj, offset = _draw_segment(data, 26, _episode_rng(seed))
        np.testing.assert_array_equal(episodes.init_states[row], data.trajectory(traj).states[offset].numpy())
    obs, start = env.reset_to(episodes.init_states)
    np.testing.assert_array_equal(obs["visual"], episodes.obs_0["visual"])
    velocity = episodes.init_states[:, 5:7]
    np.testing.assert_allclose(start[:, :2], episodes.init_states[:, :2] + 0.01 * velocity, rtol=0, atol=1e-6)
    sampled = make_episodes(env, "pusht", seeds, "random_state", goal_H=5, frameskip=5)
    init, goal = env.sample_random_init_goal_states(seeds)
    np.testing.assert_array_equal(sampled.init_states, init)
    np.testing.assert_array_equal(sampled.goal_states, goal)


def test_a_goal_file_records_where_its_trajectories_came_from(dataset, tmp_path):
    """The dataset's generator settings and the counts kept, nothing else of its manifest (which
    also holds machine-specific paths and timings); text paths work like Path objects."""
    manifest = json.loads((dataset / "wmquant_dataset.json").read_text())
    path = goal_file_from_dataset(str(dataset), "pusht", str(tmp_path / GOALS_FILE), train_episodes=2, val_episodes=1)
    assert path == tmp_path / GOALS_FILE and isinstance(path, type(tmp_path))
    source = GoalTrajectories(str(path), "train", "pusht").source
    kept = ("env", "episodes", "seed", "steps", "generator", "generator_version", "env_kwargs")
    assert source == {**{key: manifest[key] for key in kept if key in manifest},
                      "train_episodes_kept": 2, "val_episodes_kept": 1}
    assert set(manifest) - set(kept), "the manifest has nothing to leave out: the test proves nothing"
    # a dataset directory without a manifest is named instead
    bare = tmp_path / "bare"
    shutil.copytree(dataset, bare)
    (bare / "wmquant_dataset.json").unlink()
    other = goal_file_from_dataset(bare, "pusht", tmp_path / "other.safetensors", train_episodes=1)
    assert GoalTrajectories(other, "val", "pusht").source == {"train_episodes_kept": 1, "val_episodes_kept": 1}


def test_a_one_frame_trajectory_is_a_valid_goal_trajectory(tmp_path):
    from wmquant.data.base import Normalization, Trajectory
    from wmquant.data.goals import write_goal_file

    normalization = Normalization(torch.zeros(2), torch.ones(2), torch.zeros(4), torch.ones(4), torch.zeros(5), torch.ones(5))
    one = Trajectory(torch.ones(1, 5), torch.zeros(1, 2), {"shape": "T"})
    two = Trajectory(torch.zeros(2, 5), torch.ones(2, 2), {"shape": "T"})
    path = write_goal_file(str(tmp_path / "g.safetensors"), "pusht", normalization, {"val": [one, two]}, {})
    goals = GoalTrajectories(path, "val", "pusht")
    assert [goals.seq_length(i) for i in range(2)] == [1, 2]
    assert torch.equal(goals.trajectory(0).states, one.states) and torch.equal(goals.trajectory(1).actions, two.actions)
