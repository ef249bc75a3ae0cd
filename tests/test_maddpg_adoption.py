"""MADDPG's adoption threshold on a one-step k = 2 climb game, through MESA's meta-testing (Algorithm 2).

The game G(2, 2, u, 10): Q(u, u) = 1, Q(u, y) = Q(y, u) = 0 and Q(x, y) = 0.5 for x, y != u. MADDPG's actor
update scores agent i's own action against the *buffer's* action of the other agent. If a fraction p of the
replayed episodes play (u, u) and the rest play some (x, y) with x, y != u (the learner at the sub-optimal
equilibrium), playing u is worth p * 1 + (1 - p) * 0 and playing x is worth p * 0 + (1 - p) * 0.5: u wins iff
p > 1/3. If the rest are uniformly random (the warm-up) instead, u is worth p + (1 - p) / 10 and each x != u
0.5 (1 - p) 9 / 10: u wins iff p > 0.35 / 1.35 = 0.26.

Set-up: mesa_maddpg.py meta-tests test task 0 of the first task seed whose test task has k = 2, with one
"exploration policy" that always plays (u, u) (`--exploration-policies`, a file written here: an actor whose
logit for u is 20 above the others), played with a constant probability p per episode (--exploration-start =
--exploration-end = p); the other episodes are the uniformly random warm-up (the first --learning-starts steps)
and then the learner's own (Gumbel-sampled) actions. Every episode is replayed (buffer of 5000 > the run).

Measured (2026-11-30; seeds 1-3, returns of the final greedy policy; 1.0: the learner plays (u, u), 0.5: nobody
plays u, 0.0: one agent plays u, not settled), train every 8 steps (the one-step default), batch 32, lr 5e-3:

| p | 3000 steps, 1000 random (this test) | 3000 steps, 100 random | 2000 steps, 500 random | 5000 steps, 1000 random |
|---|---|---|---|---|
| 0.05 | 0.5 0.5 0.5 | | 0.5 0.5 0.5 | |
| 0.10 | | 0.5 0.0 0.0 | 0.0 0.0 0.5 | 0.5 1.0 0.5 |
| 0.15 | | | 1.0 1.0 0.5 | |
| 0.20 | | 1.0 1.0 0.0 | 1.0 1.0 1.0 | 0.0 1.0 1.0 |
| 0.25 | | 1.0 1.0 1.0 | 1.0 0.0 1.0 | |
| 0.33 | | | 1.0 1.0 1.0 | |
| 0.40 | | | 1.0 1.0 1.0 | |
| 0.50 | 1.0 1.0 1.0 | | 1.0 1.0 1.0 | 1.0 1.0 1.0 |

So the learner adopts (u, u) well below the 1/3 of the exact-Q argument: somewhere between p = 0.05 and
p = 0.15 with these budgets, and not cleanly (0.10-0.25 end split across seeds). Our reading, not yet tested:
the straight-through Gumbel-softmax gradient is the critic's slope in the action input at the sampled action,
not the exact difference Q(u, y) - Q(x, y), and early in learning the learner's own samples are near uniform,
so the 0.26 of the random mix applies, and each u it plays itself raises the effective p. The test holds the
two ends that hold on every seed: p = 0.5 adopts, p = 0.05 stays at 0.5, i.e. the *direction* of the threshold
argument, not its value 1/3 (a near-random warm-up, 100 steps, does not bring it back to 1/3 either). Measured
cost: 2.6-3.8 CPU seconds per run at 3000 steps, 6 runs, about 20 CPU seconds in all.
"""

import importlib.util
import os
from dataclasses import replace

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("mesa_maddpg", os.path.join(ROOT, "mesa_maddpg.py"))
mesa = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mesa)

ENV_ID = "climb-one-step"
TOTAL_STEPS, RANDOM_STEPS = 3000, 1000


def k2_task_seed() -> int:
    """The first task seed whose one test task (beside the 10 training tasks) is a k = 2 game."""
    return next(s for s in range(100) if mesa.sample_tasks(ENV_ID, 10, 1, s)[1][0].k == 2)


def write_always_u_policy(path: str, task_seed: int) -> int:
    """An exploration-policies file with one actor that plays u for both agents (logit of u 20 above the rest:
    the Gumbel sample is another action with probability about 9 e^-20). Returns u."""
    task = mesa.sample_tasks(ENV_ID, 10, 1, task_seed)[1][0]
    spaces = mesa.env_spaces(mesa.make_env(ENV_ID, task))
    n, obs_dim, act_dim, _, _, _ = spaces
    actor = mesa.StackedGRUNet(n, obs_dim, mesa.Args.hidden_dim, act_dim)
    with torch.no_grad():
        actor.w_out.zero_()
        actor.b_out.zero_()
        actor.b_out[:, :, task.u] = 20.0
    mesa.save_file({"env_id": ENV_ID, "settings": {}, "spaces": spaces[:4], "hidden_dim": mesa.Args.hidden_dim,
                    "actors": [actor.state_dict()]}, path)
    return task.u


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ goes to the test's directory


@pytest.mark.parametrize("p, expected", [(0.5, 1.0), (0.05, 0.5)])
def test_uu_is_adopted_above_the_threshold_and_not_below(p, expected, tmp_path):
    task_seed = k2_task_seed()
    policies = str(tmp_path / "always_u.pt")
    write_always_u_policy(policies, task_seed)
    returns = []
    for seed in (1, 2, 3):
        args = replace(mesa.Args(env_id=ENV_ID), seed=seed, task_seed=task_seed, num_test_tasks=1,
                       exploration_policies=policies, exploration_start=p, exploration_end=p,
                       total_timesteps=TOTAL_STEPS, learning_starts=RANDOM_STEPS, eval_episodes=1,
                       eval_frequency=TOTAL_STEPS, log_frequency=TOTAL_STEPS, cuda=False)
        returns.append(mesa.main(args)["test_return"])
    assert returns == [expected] * 3, f"p = {p}: final greedy returns {returns} on seeds 1-3"
