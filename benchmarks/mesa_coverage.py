"""Stage by stage, what MESA's exploration policies and its meta-tested learner play on the multi-stage climb game.

The measurements behind the README's "what we measured about why" (MESA section). For one seed and
task draw (`--seed s`, task seed 100 + s as in benchmarks/reproduce.py mesa-table2), on the first test task:

1. MESA runs once (meta-training, then meta-testing with all E exploration policies), unless
   `--exploration-policies PATH` gives saved policies (then only step 3's runs are trained).
2. For every stage: its (k, u), and whether some training task has (2, u) at that stage, the only
   way a k = 2 optimum (u, u) can enter M*. For every exploration policy: how often it plays the
   stage's optimum in `--episodes` sampled episodes (sampled as meta-testing plays them), and its
   most frequent joint action.
3. The final greedy learner of meta-testing with all policies, and with each policy of `--alone`
   on its own: its joint action and reward at every stage.

    python benchmarks/mesa_coverage.py --seed 3 --alone 0 1 2 3

Budgets and readings are mesa_maddpg.py's defaults (the paper's) unless flags set a smaller game or
budget, or the earlier readings (`--collect-steps 30000 --eq6-r-hat nearest --global-count-from
last-batch`); one MESA run (one test task) is about 3 CPU minutes here with those, about 8 with the defaults.
"""

import collections
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mesa_maddpg as mesa  # noqa: E402
from envs.multiagent import make_env  # noqa: E402


@dataclass
class Args:
    seed: int = 3
    """MESA's seed; the tasks are drawn with task seed task_seed_offset + seed"""
    task_seed_offset: int = 100
    """as in benchmarks/reproduce.py mesa-table2"""
    exploration_policies: Optional[str] = None
    """saved exploration policies (mesa_maddpg.py's exploration_policies.pt) instead of meta-training"""
    episodes: int = 200
    """sampled episodes per exploration policy"""
    alone: tuple[int, ...] = ()
    """exploration policies to meta-test with on their own, one run each"""
    # smaller games and budgets (None: mesa_maddpg.py's defaults, the paper's)
    stages: Optional[int] = None
    """S of the multi-stage game (None: 5)"""
    num_actions: Optional[int] = None
    """U (None: 10)"""
    num_exploration_policies: Optional[int] = None
    """E (None: 4)"""
    collect_steps: Optional[int] = None
    """high-reward collection steps, all training tasks (None: Table 1's 30k per task, 300k)"""
    meta_train_steps: Optional[int] = None
    """exploration-policy training steps, all E together (None: 100k)"""
    total_timesteps: Optional[int] = None
    """meta-testing steps (None: 100k)"""
    learning_starts: Optional[int] = None
    """random warm-up steps of every MADDPG (None: 3000)"""
    eq6_r_hat: str = "step"
    """mesa_maddpg.py's --eq6-r-hat: step (Eq. 6 as written) or nearest (the earlier reading)"""
    global_count_from: str = "all"
    """mesa_maddpg.py's --global-count-from: all (Algorithm 1 line 19, all of D) or last-batch (the earlier reading)"""


def stage_table(env, policy, episodes, spaces, task) -> tuple[np.ndarray, list]:
    """Optimum hit rate [S] and most frequent joint action per stage over `episodes` episodes."""
    hits, joint = np.zeros(len(task)), [collections.Counter() for _ in task]
    for i in range(episodes):
        ep = mesa.run_episode(env, policy, i, spaces)
        actions = ep["actions"].argmax(-1)  # [n, S]
        hits += ep["rewards"] >= 1.0
        for t in range(len(task)):
            joint[t][tuple(int(a) for a in actions[:, t])] += 1
    return hits / episodes, [c.most_common(1)[0][0] for c in joint]


def greedy_line(name, env, actor_state, args, spaces, device) -> str:
    n, obs_dim, act_dim, discrete, _, _ = spaces
    learner = mesa.MADDPG(n, obs_dim, act_dim, discrete, args, device)
    learner.actor.load_state_dict(actor_state)
    ep = mesa.run_episode(env, mesa.learner_policy(learner, "greedy", device), 0, spaces)
    actions = ep["actions"].argmax(-1)
    cells = [f"({actions[0, t]},{actions[1, t]}) {ep['rewards'][t]:.1f}" for t in range(actions.shape[1])]
    return f"{name:28s} " + "  ".join(cells) + f"   mean {ep['rewards'].mean():.2f}"


def main(a: Args) -> None:
    device = torch.device("cpu")
    overrides = {name: getattr(a, name) for name in ("stages", "num_actions", "num_exploration_policies", "collect_steps",
                                                      "meta_train_steps", "total_timesteps", "learning_starts",
                                                      "eq6_r_hat", "global_count_from")}
    args = replace(mesa.Args(env_id="climb-multi-stage"), seed=a.seed, task_seed=a.task_seed_offset + a.seed,
                   num_test_tasks=1, cuda=False, exploration_policies=a.exploration_policies, **overrides)
    args, settings, train_tasks, test_tasks = mesa.setup(args)
    task = test_tasks[0]
    env = make_env(args.env_id, task, **settings)
    spaces = mesa.env_spaces(env)
    n, obs_dim, act_dim, discrete, _, _ = spaces

    learners = {}
    if a.exploration_policies is None:
        result = mesa.main(args)
        policies_path, learners["MESA, all policies"] = result["exploration_policies"], result["test_actors"][0]
    else:
        policies_path = a.exploration_policies
    saved = torch.load(policies_path, map_location=device, weights_only=True)
    for e in a.alone:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "one_policy.pt")
            torch.save({**saved, "actors": [saved["actors"][e]]}, path)
            result = mesa.main(replace(args, exploration_policies=path))
        learners[f"MESA, policy {e} alone"] = result["test_actors"][0]

    print(f"seed {a.seed}, task seed {args.task_seed}, test task 0, stage by stage:")
    for t, stage in enumerate(task):
        in_training = any(other[t].k == 2 and other[t].u == stage.u for other in train_tasks)
        optimum = f"(u, u) = ({stage.u},{stage.u}) in a training task: {in_training}" if stage.k == 2 else "one agent on u"
        print(f"  stage {t}: k={stage.k} u={stage.u}  optimum {optimum}")
    print(f"exploration policies, {a.episodes} sampled episodes each: optimum hit rate / most frequent joint action")
    for e, actor_state in enumerate(saved["actors"]):
        explorer = mesa.MADDPG(n, obs_dim, act_dim, discrete, args, device)
        explorer.actor.load_state_dict(actor_state)
        rates, modes = stage_table(env, mesa.learner_policy(explorer, "explore", device), a.episodes, spaces, task)
        print(f"  policy {e}: " + "  ".join(f"{r:.3f} {m}" for r, m in zip(rates, modes)))
    print("final greedy learners: joint action and reward per stage")
    for name, actor_state in learners.items():
        print("  " + greedy_line(name, env, actor_state, args, spaces, device))


if __name__ == "__main__":
    main(tyro.cli(Args))
