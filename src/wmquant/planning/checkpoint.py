"""Resumable MPC: the state of a planning run after each MPC iteration, in `mpc_state.npz`.

A long run (the PushT protocol, a failing quantized configuration that plans every episode for
every iteration) can be killed by a time limit or a preempted job. With a checkpoint the next
attempt continues after the last finished iteration, and its result is identical to an
uninterrupted run's:

* the planner's noise is drawn per (seed, episode, iteration), so nothing random is carried;
* the environments are not restored from saved states (a physics engine's contact caches are not
  part of a state, so a reset would change later steps) but replayed: reset to the episodes'
  initial states, then every executed action is stepped again, in the same per-iteration batches
  of active episodes. The replayed states must equal the saved ones bit for bit, else the
  checkpoint is discarded and the run starts over;
* a fingerprint of the resolved config, the model's weights (after quantization) and the
  episodes must match, so a checkpoint never continues a different run.

The file holds numpy arrays only (`allow_pickle=False`); it is written atomically and removed
once the run's result is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import atomic_path

if TYPE_CHECKING:
    import torch

log = logging.getLogger("wmquant.planning")

CHECKPOINT_FILE = "mpc_state.npz"
CHECKPOINT_VERSION = 1
#: Per-episode arrays of the MPC loop, saved and restored under these names.
EPISODE_ARRAYS = ("succeeded", "success_iter", "latent_mse", "plan_loss", "visual_dist", "proprio_dist",
                  "state_dist", "div_visual", "div_proprio", "final_states", "cur_states")
FIRST_PLAN_ARRAYS = ("episodes", "env_frames", "predicted_visual", "goal_frames")


def fingerprint(config: Any, model: torch.nn.Module | None, seeds: list[int]) -> str:
    """sha256 over the config (a JSON-able mapping), every tensor of the model and the episode seeds."""
    import torch  # here, so that reading a checkpoint's progress (`wmquant runs list`) needs no torch

    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(json.dumps(list(map(int, seeds))).encode())
    if model is not None:
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            data = tensor.detach().cpu().contiguous()
            digest.update(str(data.dtype).encode() + str(tuple(data.shape)).encode())
            # flattened first: a 0-dim tensor (a real layer's static activation scale) has no byte view
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


@dataclass
class MPCState:
    """Everything the MPC loop needs to continue after iteration `iterations_done - 1`."""

    iterations_done: int
    arrays: dict[str, np.ndarray]          # EPISODE_ARRAYS
    memo: np.ndarray | None                # carried-over actions (E, H - n_taken, f*A), None before the first plan
    executed: np.ndarray                   # raw env actions (E, steps, A), zeros where an episode was not stepped
    success_by_iter: np.ndarray            # (iterations_done, E)
    latent_mse_by_iter: np.ndarray
    planning_loss_by_iter: np.ndarray
    logs: list[dict[str, Any]]
    first_plan: dict[str, Any]
    seconds: float                         # planning time spent by earlier attempts


def save_state(path: Path, state: MPCState, run_fingerprint: str) -> None:
    payload = {f"episode_{k}": v for k, v in state.arrays.items()}
    payload.update({f"first_plan_{k}": np.asarray(v) for k, v in state.first_plan.items()})
    payload.update(
        version=np.array(CHECKPOINT_VERSION), fingerprint=np.array(run_fingerprint),
        iterations_done=np.array(state.iterations_done), executed=state.executed,
        success_by_iter=state.success_by_iter.astype(np.int8),
        latent_mse_by_iter=state.latent_mse_by_iter, planning_loss_by_iter=state.planning_loss_by_iter,
        logs=np.array(json.dumps(state.logs)), seconds=np.array(state.seconds),
        has_memo=np.array(state.memo is not None),
        memo=state.memo if state.memo is not None else np.zeros(0),
    )
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # np.savez on a path would append ".npz" to the temporary name
            np.savez(fh, **payload)


def load_state(path: Path, run_fingerprint: str, arrays: tuple[str, ...] = EPISODE_ARRAYS) -> MPCState | None:
    """The saved state with the per-episode `arrays`, or None (with a log line saying why) if there
    is none or it belongs elsewhere."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != CHECKPOINT_VERSION or str(data["fingerprint"]) != run_fingerprint:
                log.warning("%s belongs to another run (config, model or episodes differ); starting over", path)
                return None
            return MPCState(
                iterations_done=int(data["iterations_done"]),
                arrays={k: data[f"episode_{k}"] for k in arrays},
                memo=data["memo"] if bool(data["has_memo"]) else None,
                executed=data["executed"],
                success_by_iter=data["success_by_iter"].astype(int),
                latent_mse_by_iter=data["latent_mse_by_iter"],
                planning_loss_by_iter=data["planning_loss_by_iter"],
                logs=json.loads(str(data["logs"])),
                first_plan={k: data[f"first_plan_{k}"] for k in FIRST_PLAN_ARRAYS if f"first_plan_{k}" in data},
                seconds=float(data["seconds"]),
            )
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cannot read %s (%s); starting over", path, exc)
        return None


def checkpoint_progress(path: Path) -> int | None:
    """MPC iterations a checkpoint holds (without checking whose it is), or None if there is no
    readable one: what `wmquant runs list` and reports show for a run that was cut off."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return int(data["iterations_done"])
    except (OSError, ValueError, KeyError):
        return None


def active_at(iteration: int, success_iter: np.ndarray, skip_succeeded: bool) -> np.ndarray:
    """Indices of the episodes that MPC iteration `iteration` stepped (success_iter: -1 = never)."""
    if not skip_succeeded:
        return np.arange(len(success_iter))
    return np.flatnonzero((success_iter < 0) | (success_iter >= iteration))


def encode_success_iter(success_iter: list[int | None]) -> np.ndarray:
    """The MPC loop's first-success iterations as an array, -1 for never."""
    return np.array([-1 if i is None else i for i in success_iter])


def decode_success_iter(saved: np.ndarray) -> list[int | None]:
    return [None if i < 0 else int(i) for i in saved]


def replay(env, init_states: np.ndarray, state: MPCState, skip_succeeded: bool, steps_per_iteration: int):
    """Reset the envs to the initial states and step every executed action again, in the batches the
    original run used. Returns (observations, states) of every episode; or, if the replayed states
    differ from the saved ones, resets the envs to the initial states again (the run starts over)
    and returns None."""
    obs, states = env.reset_to(init_states)
    cur_obs = {k: np.array(v) for k, v in obs.items()}
    cur_states = np.array(states)
    success_iter = state.arrays["success_iter"]
    for k in range(state.iterations_done):
        active = active_at(k, success_iter, skip_succeeded)
        block = state.executed[:, k * steps_per_iteration:(k + 1) * steps_per_iteration]
        for t in range(steps_per_iteration):
            obs, states = env.step(block[active, t], indices=active)
        for key in cur_obs:
            cur_obs[key][active] = obs[key]
        cur_states[active] = states
    if not np.array_equal(cur_states, state.arrays["cur_states"]):
        log.warning("replaying the checkpoint's actions did not reproduce its states; starting over")
        env.reset_to(init_states)
        return None
    return cur_obs, cur_states


def announce_resume(desc: str, checkpoint, trace, max_iter: int) -> None:
    """One line on stderr: which checkpoint a run continues, how far it had got, where it goes on."""
    import sys

    from tqdm.auto import tqdm

    done = trace.resumed_from
    rate = float(np.mean(trace.success_by_iter[-1])) if trace.success_by_iter else 0.0
    tqdm.write(f"{desc}: resuming from {checkpoint}: MPC iterations 1-{done} are done (success {rate:.2f}), "
               f"continuing at iteration {done + 1} of {max_iter}", file=sys.stderr)
