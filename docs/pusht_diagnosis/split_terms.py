"""The two terms of the PushT model's cost of the true outcomes, and the state errors at the end of
both plans, on the episodes of a `wmquant diagnose objective` report whose failure is the metric's.
Usage: python docs/pusht_diagnosis/split_terms.py [REPORT.json]"""
import json, sys, numpy as np, torch
from wmquant.configs import compose_config
from wmquant.planning.session import PlanningSession
from wmquant.diagnose.objective import verdicts
from wmquant.planning.mpc import _to_env_actions

def main():
    rep = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "docs/pusht_diagnosis/objective_alpha1.json"))
    session = PlanningSession(compose_config("plan_pusht", ["model_name=pusht", "n_evals=50", "engine.device=cpu"]))
    episodes, env = session.episodes("evaluation")
    engine, f = session.engine, session.bundle.frameskip
    print("objective", engine.objective)
    pe = rep["per_episode"]
    with torch.no_grad():
        zg = engine.encode(episodes.obs_g)
        out = {}
        for name in ("model", "simulator"):
            a = torch.tensor(rep["plans"][name], dtype=torch.float32)
            obses, states = env.rollout(episodes.init_states, _to_env_actions(a, f, engine))
            reached = {k: v[:, ::f] for k, v in obses.items()}
            z = engine.encode(reached)
            vis, pro = engine.objective.terms(z, zg)
            out[name] = (vis.numpy(), pro.numpy(), states[:, -1])
    g = episodes.goal_states
    metric = verdicts(pe)["metric"]
    def err(st):
        d = st[:, :5] - g[:, :5]
        ang = np.abs(np.remainder(d[:, 4] + np.pi, 2*np.pi) - np.pi)
        return np.linalg.norm(d[:, :2], axis=1), np.linalg.norm(d[:, 2:4], axis=1), np.degrees(ang), np.linalg.norm(st[:, 5:7] - g[:, 5:7], axis=1)
    print("ep | vis_m vis_s | pro_m pro_s | agent_m agent_s | block_m block_s | ang_m ang_s | vel_m vel_s")
    for i in np.flatnonzero(metric):
        em, es = err(out["model"][2]), err(out["simulator"][2])
        print(i, "| %.4f %.4f | %.4f %.4f | %5.1f %5.1f | %5.1f %5.1f | %5.1f %5.1f | %6.1f %6.1f" % (
            out["model"][0][i], out["simulator"][0][i], out["model"][1][i], out["simulator"][1][i],
            em[0][i], es[0][i], em[1][i], es[1][i], em[2][i], es[2][i], em[3][i], es[3][i]))
    print("goal velocity norms (metric eps):", np.round(np.linalg.norm(g[metric][:, 5:7], axis=1), 1))
    env.close()


if __name__ == '__main__':
    main()
