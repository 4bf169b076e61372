"""A planning run's directory: `result.json` (written last, atomically), `logs.json`, and figures.

A directory without `result.json` is an unfinished run; a directory with it is complete. Every file
is written through `wmquant.io`, so a killed run never leaves a truncated result.
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import functools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .. import __version__
from .. import io as wio
from ..envs import env_function
from .episodes import EpisodeSet
from .mpc import PlanningTrace
from .plots import plot_curve, plot_rollout_grid, to_uint8_images

RESULT_SCHEMA = "wmquant.result/1"


#: the run directories that `new_run_dir` created inside the innermost `discards_empty_run_dir` call
_CREATED_RUN_DIRS: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("created_run_dirs", default=None)


def discards_empty_run_dir(run):
    """Wrap a run function so that, if it stops (error, Ctrl-C, SIGTERM through the CLI) before
    writing anything into the run directory it created, that directory is removed again. A directory
    holding anything (a resumable checkpoint, progress, logs) is kept, as is one that existed before;
    parents created for it (plan_outputs/) go too while they are empty."""

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        created: list[Path] = []
        token = _CREATED_RUN_DIRS.set(created)
        try:
            return run(*args, **kwargs)
        except BaseException:
            for path in created:  # the run directory first, then the parents it needed
                try:
                    path.rmdir()  # refuses a directory that is not empty
                except OSError:
                    break
            raise
        finally:
            _CREATED_RUN_DIRS.reset(token)

    return wrapper


def new_run_dir(cfg: DictConfig) -> Path:
    """`output_dir` if given, else plan_outputs/<time>_<model>_gH<goal_H>_<tag> (upstream's naming)."""
    if cfg.get("output_dir"):
        path = Path(str(cfg.output_dir))
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d%H%M%S")
        model = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(cfg.model_name))
        tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(cfg.tag))
        path = Path("plan_outputs") / f"{stamp}_{model}_gH{cfg.goal_H}_{tag}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = path.with_name(f"{stamp}_{model}_gH{cfg.goal_H}_{tag}_{suffix}")
    missing = [d for d in (path, *path.parents) if not d.exists()]  # deepest first
    wio.make_output_dir(path)
    created = _CREATED_RUN_DIRS.get()
    if created is not None:
        created.extend(missing)
    return path


def build_result(
    cfg: DictConfig,
    trace: PlanningTrace,
    episodes: EpisodeSet,
    wall_seconds: float,
    method: str = "fp",
    quant: dict[str, Any] | None = None,
    calibration: EpisodeSet | None = None,
    run_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    result = {
        "schema": RESULT_SCHEMA,
        "run_id": run_id or str(cfg.get("tag", "")),
        "env": str(cfg.env),
        "model": str(cfg.model_name),
        "method": method,
        "quant": quant,
        "n_evals": len(episodes),
        "eval_seeds": list(episodes.seeds),
        "calibration_seeds": None if calibration is None else list(calibration.seeds),
        "success_rate_by_iter": trace.success_rate_by_iter,
        "success_by_iter": trace.success_by_iter,
        "latent_mse_by_iter": trace.latent_mse_by_iter,
        "planning_loss_by_iter": trace.planning_loss_by_iter,
        "first_success_iter": trace.success_iter,
        # per MPC iteration: state and latent distances, the model's divergence from the reached
        # latent, and the planning loss after every optimisation step (the mechanism measurements)
        "mpc_logs": trace.logs,
        "final_success_rate": trace.success_rate_by_iter[-1] if trace.success_by_iter else 0.0,
        "wall_seconds": float(wall_seconds),
        "episodes": {
            "goal_source": episodes.meta.get("goal_source"),
            "init_states": np.round(episodes.init_states, 6).tolist(),
            "goal_states": np.round(episodes.goal_states, 6).tolist(),
            "env_infos": [{k: _plain(v) for k, v in info.items()} for info in episodes.env_infos],
        },
        "tag": str(cfg.get("tag", "")),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wmquant_version": __version__,
    }
    breakdown = env_function(str(cfg.env), "failure_breakdown")
    if breakdown is not None and trace.final_states is not None:
        result["failure_breakdown"] = breakdown(episodes.init_states, episodes.goal_states, trace.final_states)
    if extra:
        result.update(extra)
    return result


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def write_logs(run_dir: Path, trace: PlanningTrace, prefix: str = "") -> None:
    """logs.json as upstream writes it: JSON lines, one per MPC iteration, then a final_eval line."""
    lines = []
    for entry in trace.logs:
        lines.append({(f"{prefix}{k}" if k != "step" else k): v for k, v in entry.items()})
    if trace.logs:
        last = trace.logs[-1]
        lines.append({f"{prefix}final_eval/{k.split('/', 1)[1]}": v for k, v in last.items() if "/" in k})
    existing = (run_dir / "logs.json").read_text() if (run_dir / "logs.json").exists() else ""
    wio.write_text(run_dir / "logs.json", existing + "".join(json.dumps(line) + "\n" for line in lines))


def write_figures(run_dir: Path, trace: PlanningTrace, model, title: str) -> list[Path]:
    paths = []
    if trace.success_by_iter:
        path = run_dir / "success_by_iter.png"
        plot_curve(trace.success_rate_by_iter, path, "success rate", title, ylim=(-0.02, 1.02))
        paths.append(path)
        path = run_dir / "latent_mse_by_iter.png"
        plot_curve(trace.latent_mse_by_iter, path, "latent MSE to goal", title)
        paths.append(path)
    if trace.first_plan:
        imagined = None
        decoder = getattr(model, "decoder", None)
        if decoder is not None:
            import torch

            with torch.no_grad():
                device = next(model.parameters()).device
                images = model.decode_visual(trace.first_plan["predicted_visual"].to(device))
            imagined = to_uint8_images(images)
        path = run_dir / "rollout_grid.png"
        plot_rollout_grid(trace.first_plan["env_frames"], imagined, trace.first_plan["goal_frames"], path)
        paths.append(path)
    return paths


def progress_writer(run_dir: Path, started: float):
    """An MPC callback that keeps `progress.json` (success so far) current, so that an interrupted
    run still shows what it had measured. `result.json` alone marks a finished run."""
    import time

    iteration_seconds: list[float] = []  # of the iterations run by this process
    last = [started]

    def write(iteration: int, trace: PlanningTrace) -> None:
        now = time.perf_counter()
        iteration_seconds.append(now - last[0])
        last[0] = now
        wio.write_json(run_dir / "progress.json", {
            "iterations_done": iteration + 1,
            "success_rate_by_iter": trace.success_rate_by_iter,
            "success_by_iter": trace.success_by_iter,
            "latent_mse_by_iter": trace.latent_mse_by_iter,
            "seconds": now - started + trace.earlier_seconds,
            # the first also holds what came before the MPC loop (model load, calibration)
            "iteration_seconds": iteration_seconds,
            **({"resumed_from_iteration": trace.resumed_from} if trace.resumed_from is not None else {}),
        })

    return write


OPEN_LOOP_STEPS = 10  # model steps of the open-loop rollout saved with every run (the paper's Fig. 2)


def write_open_loop(run_dir: Path, session, episodes: EpisodeSet, seed: int, steps: int = OPEN_LOOP_STEPS) -> Path | None:
    """`open_loop.npz`: the env's frames and the model's decoded imagination under one fixed action
    sequence (normal in the normalised action space, drawn from `seed`) from the first evaluation
    episode's start. Every run of a sweep uses the same actions, so a report can set the FP and the
    quantized models' imaginations side by side. None for models without a decoder."""
    import torch

    model = session.model
    if getattr(model, "decoder", None) is None or len(episodes) == 0:
        return None
    frameskip, action_dim = session.bundle.frameskip, session.bundle.action_dim
    actions = torch.randn((1, steps, frameskip * action_dim), generator=torch.Generator().manual_seed(int(seed)))
    first = {k: v[:1] for k, v in episodes.obs_0.items()}
    z0 = session.engine.encode(first)
    with torch.no_grad():
        predicted = session.engine.rollout(z0, actions)
        imagined = to_uint8_images(model.decode_visual(predicted["visual"].to(next(model.parameters()).device)))[0]
    raw = session.bundle.normalization.denormalize_actions(actions.reshape(1, steps * frameskip, action_dim))
    env = session.make_env(1)
    try:
        env.update_env(episodes.env_infos[:1])
        obses, _ = env.rollout(episodes.init_states[:1], raw.double().numpy())
    finally:
        env.close()
    real = obses["visual"][0, ::frameskip]
    path = run_dir / "open_loop.npz"
    with wio.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, env_frames=real, imagined_frames=imagined, actions=actions.numpy(),
                                episode_seed=np.int64(episodes.seeds[0]))
    return path


def write_result(run_dir: Path, result: dict[str, Any]) -> Path:
    path = run_dir / "result.json"
    wio.write_json(path, result)
    return path


def run_label(result: dict[str, Any]) -> str:
    """'FP', or e.g. 'rtn W4A16 G128 per-token' (16 = not quantized)."""
    quant = result.get("quant")
    if not quant:
        return "FP"
    scheme = quant["predictor"]
    text = f"{result['method']} W{scheme['w_bits']}A{scheme['a_bits']}"
    if scheme.get("w_group_size"):
        text += f" G{scheme['w_group_size']}"
    if scheme["a_bits"] < 16 and scheme.get("a_granularity") == "per_token":
        text += " per-token"
    formats = [f for f, bits in ((scheme.get("w_format", "int"), scheme["w_bits"]), (scheme.get("a_format", "int"),
                                                                                      scheme["a_bits"])) if bits < 16]
    if any(f != "int" for f in formats):
        text += " " + "/".join(dict.fromkeys(formats))
    enc = quant.get("encoder") or {}
    if quant.get("quant_encoder") and (enc.get("w_bits"), enc.get("a_bits")) != (scheme["w_bits"], scheme["a_bits"]):
        text += f" (enc W{enc['w_bits']}A{enc['a_bits']})"
    return text


def success_table(rates: dict[str, list[float]], columns: tuple[int, ...] | None = None) -> str:
    """A plain-text table of success after MPC iterations 1, 5, 10, 20, 30, ... and the last
    (1-based, as the reports count them; column k = after iteration k)."""
    longest = max((len(v) for v in rates.values()), default=0)
    if columns is None:
        columns = tuple(k for k in (1, 5, 10, 20, 30, 40, 50) if k < longest) + ((longest,) if longest else ())
    cols = [c for c in columns if 1 <= c <= longest]
    title = "success after iteration"
    width = max([len(title) + 2, *(len(name) + 2 for name in rates)])
    head = f"{title:<{width}}" + "".join(f"{c:>7}" for c in cols)
    rows = [head, "-" * len(head)]
    for name, values in rates.items():
        cells = "".join(f"{values[c - 1]:>7.2f}" if c - 1 < len(values) else f"{'':>7}" for c in cols)
        rows.append(f"{name:<{width}}{cells}")
    return "\n".join(rows)
