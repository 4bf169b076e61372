"""How far the PushT model predicts the block to move under a plan, against how far it moves.

A linear probe (ridge, `wmquant.diagnose.mechanisms.LinearProbe`) reads the block's position from
the model's visual latent (all patches, flattened); it is fitted on frames rendered from states of
the goal file's training split. On the prediction failures of a `wmquant diagnose objective`
report, both plans are then rolled out twice: in the simulator (true block positions, and the
probe on the encoder's latents of the true frames) and in the model (the probe on the predicted
latents). Block displacement is measured from the episode's start to the end of the horizon.
Usage: python docs/pusht_diagnosis/block_motion.py [REPORT.json] [MODEL] (defaults: objective_alpha0.0625.json and
the shipped `pusht`; another model is read along the same report's plans, and its prediction failures
are then those of the report's model)"""
import json
import sys

import numpy as np
import torch
from safetensors.torch import load_file

from wmquant.configs import compose_config
from wmquant.diagnose.mechanisms import LinearProbe
from wmquant.diagnose.objective import verdicts
from wmquant.models.checkpoint import model_directory
from wmquant.planning.mpc import _to_env_actions
from wmquant.planning.session import PlanningSession

PROBE_FRAMES, HELD_OUT = 4000, 1000


def flat(z):
    return z["visual"].flatten(2).flatten(0, 1).double().numpy()  # (B * T, N * E)


def token_errors(true, predicted):
    """Per model step: squared error per patch token of the prediction, of the prediction rescaled to
    the true token norm, and of copying the start frame; and the predicted against the true norms."""
    rows = []
    for k in range(1, true.shape[1]):
        t, p = true[:, k].flatten(0, 1).double(), predicted[:, k].flatten(0, 1).double()
        tn, pn = t.norm(dim=-1), p.norm(dim=-1)
        rows.append((k, (t - p).pow(2).sum(-1).mean().item(), (t - p / pn[:, None] * tn[:, None]).pow(2).sum(-1).mean().item(),
                     (t - true[:, 0].flatten(0, 1).double()).pow(2).sum(-1).mean().item(),
                     float(np.corrcoef(tn.numpy(), pn.numpy())[0, 1]),
                     float(torch.nn.functional.cosine_similarity(t, p, dim=-1).median())))
    return rows


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "docs/pusht_diagnosis/objective_alpha0.0625.json"
    model = sys.argv[2] if len(sys.argv) > 2 else "pusht"
    report = json.load(open(path))
    session = PlanningSession(compose_config("plan_pusht", [f"model_name={model}", "n_evals=50", "engine.device=cpu"]))
    episodes, env = session.episodes("evaluation")
    engine, frameskip = session.engine, session.bundle.frameskip
    goals = load_file(str(model_directory(model) / "goals.safetensors"))
    rng = np.random.default_rng(0)
    states = goals["train/states"].numpy().astype(np.float64)
    states = states[rng.choice(len(states), PROBE_FRAMES + HELD_OUT, replace=False)]
    features = []
    with torch.no_grad():
        for start in range(0, len(states), 50):
            obs, _ = env.reset_to(states[start:start + 50], list(range(min(50, len(states) - start))))
            features.append(flat(engine.encode({k: v[:, None] for k, v in obs.items()})))
    features = np.concatenate(features)
    block = states[:, 2:4]
    probe = LinearProbe(features[:PROBE_FRAMES], block[:PROBE_FRAMES])
    held_error = np.linalg.norm(probe.predict(features[PROBE_FRAMES:]) - block[PROBE_FRAMES:], axis=1)
    print(f"probe of the block position: R2 {probe.r2(features[PROBE_FRAMES:], block[PROBE_FRAMES:]):.3f} on "
          f"{HELD_OUT} held-out frames, median error {np.median(held_error):.1f} px")
    per_episode = report["per_episode"]
    prediction = verdicts(per_episode)["prediction"]
    rows, per_step = {}, {}
    with torch.no_grad():
        z0 = engine.encode(episodes.obs_0)
        for name in ("simulator", "model"):
            actions = torch.tensor(report["plans"][name], dtype=torch.float32)
            obses, true_states = env.rollout(episodes.init_states, _to_env_actions(actions, frameskip, engine))
            reached = {k: v[:, ::frameskip] for k, v in obses.items()}
            z_true = engine.encode(reached)
            z_pred = engine.rollout(z0, actions)
            steps = z_true["visual"].shape[1]
            probe_true = probe.predict(flat(z_true)).reshape(len(actions), steps, 2)
            probe_pred = probe.predict(flat({"visual": z_pred["visual"][:, -steps:]})).reshape(len(actions), steps, 2)
            true_block = true_states[:, ::frameskip, 2:4]
            start = episodes.init_states[:, 2:4]
            rows[name] = {
                "true": np.linalg.norm(true_block[:, -1] - start, axis=1),
                "probe on true frames": np.linalg.norm(probe_true[:, -1] - probe_true[:, 0], axis=1),
                "probe on predicted latents": np.linalg.norm(probe_pred[:, -1] - probe_pred[:, 0], axis=1),
                "predicted end to true end": np.linalg.norm(probe_pred[:, -1] - true_block[:, -1], axis=1),
                "probe's end on true frames to true end": np.linalg.norm(probe_true[:, -1] - true_block[:, -1], axis=1),
            }
            if name == "simulator":
                latent_rows = token_errors(z_true["visual"], z_pred["visual"][:, -steps:])
            per_step[name] = (np.linalg.norm(probe_pred - true_block, axis=2), np.linalg.norm(probe_true - true_block, axis=2),
                              np.linalg.norm(true_block - true_block[:, :1], axis=2))
    env.close()
    print(f"{int(prediction.sum())} prediction failures of {path}; block displacement over the horizon (px), median [quartiles]:")
    print("| plan | true | probe on the true frames | probe on the predicted latents | predicted end to the true end | probe's end on the true frames to the true end |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        cells = [f"{np.median(v[prediction]):.1f} [{np.percentile(v[prediction], 25):.1f}, {np.percentile(v[prediction], 75):.1f}]"
                 for v in row.values()]
        print(f"| {name}'s | " + " | ".join(cells) + " |")
    print("Visual latent per patch token along the simulator's plans, all 50 episodes: squared error of the prediction / "
          "of the prediction at the true token norm / of copying the start frame; correlation of predicted and true token "
          "norms; median cosine")
    print("| model step | prediction | at the true norm | copy of the start | norm correlation | cosine |")
    print("|---|---|---|---|---|---|")
    for k, error, at_norm, copy, correlation, cosine in latent_rows:
        print(f"| {k} | {error:.2f} | {at_norm:.2f} | {copy:.2f} | {correlation:.2f} | {cosine:.3f} |")
    print("Block position error (px, median) at each model step (0 = the start): the probe on the predicted latents / on the "
          "true frames / a prediction that the block stays where it started")
    print("| plan | episodes | " + " | ".join(f"step {k}" for k in range(per_step['simulator'][0].shape[1])) + " |")
    print("|---|---|" + "---|" * per_step["simulator"][0].shape[1])
    for name, (predicted, true, still) in per_step.items():
        for label, mask in (("prediction failures", prediction), ("all 50", np.ones(len(prediction), bool))):
            print(f"| {name}'s | {label} | " + " | ".join(f"{np.median(predicted[mask, k]):.0f} / {np.median(true[mask, k]):.0f} / {np.median(still[mask, k]):.0f}"
                                                     for k in range(predicted.shape[1])) + " |")


if __name__ == "__main__":
    main()
