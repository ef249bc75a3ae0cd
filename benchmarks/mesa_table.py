"""Our measured version of the climb-game columns of MESA's Appendix Table 2 (MESA vs MADDPG).

For every seed s: the tasks are drawn with task_seed = task_seed_offset + s (so the draws
differ from the tests', which use task seeds below 100); MESA meta-trains once and meta-tests
on the first `--num-test-tasks` test tasks; MADDPG learns each of the same test tasks from
scratch. A run's number is the mean final test return over its test tasks (averaged over
timesteps, as the paper reports the climb games); the table shows mean +- std over seeds.
Every run uses the paper's budgets (Table 1) unless flags say otherwise. A last row, computed
from the task draws without training, is the return of a learner that solves exactly the k = 1
stages (one agent on u) and none of the k = 2 stages (both on u), for comparison.

    python benchmarks/mesa_table.py --seeds 1 2 3 4 5 --jobs 2

prints a markdown table; the per-run returns go to stderr as they finish.
"""

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "baselines"))


ROW_NAMES = {"mesa": "MESA", "maddpg": "MADDPG", "maddpg-greedy": "MADDPG, greedy acting"}  # --methods -> table row


@dataclass
class Args:
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    """seeds; seed s draws its tasks with task_seed_offset + s"""
    env_ids: tuple[str, ...] = ("climb-one-step", "climb-multi-stage")
    """environments (columns of the table)"""
    methods: tuple[str, ...] = ("mesa", "maddpg")
    """rows of the table: mesa, maddpg, and maddpg-greedy (a diagnostic: MADDPG that plays the argmax
    after the random warm-up instead of a Gumbel sample, so it explores only during the warm-up)"""
    num_test_tasks: int = 1
    """test tasks per seed (the paper's Table 1: 5; 1 keeps a seed to minutes on a 2-core CPU)"""
    task_seed_offset: int = 100
    """task_seed = task_seed_offset + seed"""
    jobs: int = 2
    """runs in parallel (one CPU thread each)"""
    ceiling: bool = False
    """print only the multi-stage ceiling (`multi_stage_ceiling`, no training) over task seeds offset+1 .. offset+30"""


def run(job):
    """One (method, env_id, seed) run, in a process of its own -> its mean test return."""
    method, env_id, seed, task_seed, num_test_tasks = job
    import contextlib
    import io

    import maddpg
    import mesa_maddpg

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        if method == "mesa":
            args = replace(mesa_maddpg.Args(env_id=env_id), seed=seed, task_seed=task_seed, num_test_tasks=num_test_tasks, cuda=False)
            value = mesa_maddpg.main(args)["test_return"]
        else:
            if method == "maddpg-greedy":  # this process only: "explore" acts as "greedy"
                sample = maddpg.MADDPG.policy_action
                maddpg.MADDPG.policy_action = lambda self, out, mode: sample(self, out, "greedy" if mode == "explore" else mode)
            returns = []
            for index in range(num_test_tasks):
                args = replace(maddpg.Args(env_id=env_id), seed=seed, task_seed=task_seed, num_test_tasks=num_test_tasks,
                               test_task_index=index, cuda=False, exp_name=method)
                returns.append(maddpg.main(args)["test_return"])
            value = float(np.mean(returns))
    print(f"{method} {env_id} seed={seed} task_seed={task_seed}: {value:.4f}", file=sys.stderr, flush=True)
    return value


def k1_only_return(env_id: str, task_seed: int, num_test_tasks: int) -> float:
    """The mean test return of a learner that solves every k = 1 stage and no k = 2 stage of the
    first num_test_tasks test tasks of task_seed (1 and 0.5 per stage), from the task draw alone:
    the table's reference row, no training."""
    from envs.multiagent import sample_tasks

    _, test = sample_tasks(env_id, 10, num_test_tasks, task_seed)
    stages = [task if isinstance(task, tuple) else (task,) for task in test]  # one-step: one stage
    return float(np.mean([np.mean([1.0 if stage.k == 1 else 0.5 for stage in task]) for task in stages]))


def multi_stage_ceiling(task_seeds, num_train: int = 10, num_test: int = 5) -> dict:
    """What meta-exploration can add on climb-multi-stage, from the task draws alone (no training).

    A learner that solves every k = 1 stage (one agent moving to u is a strict improvement, so
    gradient learners find it) and no k = 2 stage averages `maddpg`. MESA's exploration can only
    show a test stage (k = 2, u) its optimum (u, u) if that joint action is in M*, i.e. if some
    training task has (2, u) at the same stage; `mesa_bound` also solves all of those.
    """
    from envs.multiagent import sample_tasks

    k1 = k2 = k2_in_mstar = 0
    for task_seed in task_seeds:
        train, test = sample_tasks("climb-multi-stage", num_train, num_test, task_seed)
        for task in test:
            for t, stage in enumerate(task):
                if stage.k == 1:
                    k1 += 1
                    continue
                k2 += 1
                k2_in_mstar += any(other[t].k == 2 and other[t].u == stage.u for other in train)
    stages = k1 + k2
    return {"stages": stages, "k2_fraction": k2 / stages, "k2_optimum_in_mstar": k2_in_mstar / k2,
            "maddpg": (k1 + 0.5 * k2) / stages, "mesa_bound": (k1 + k2_in_mstar + 0.5 * (k2 - k2_in_mstar)) / stages}


def main(args: Args) -> str:
    if args.ceiling:
        c = multi_stage_ceiling(range(args.task_seed_offset + 1, args.task_seed_offset + 31))
        print(f"climb-multi-stage, task seeds {args.task_seed_offset + 1}..{args.task_seed_offset + 30}, 5 test tasks each: "
              f"{c['stages']} test stages, {c['k2_fraction']:.0%} with k = 2, of which {c['k2_optimum_in_mstar']:.0%} have "
              f"their optimum (u, u) at that stage in some training task; solving every k = 1 stage gives "
              f"{c['maddpg']:.3f}, solving those k = 2 stages too gives at most {c['mesa_bound']:.3f}")
        return ""
    jobs = [(method, env_id, seed, args.task_seed_offset + seed, args.num_test_tasks)
            for env_id in args.env_ids for method in args.methods for seed in args.seeds]
    unknown = set(args.methods) - set(ROW_NAMES)
    if unknown:
        raise SystemExit(f"error: unknown --methods {sorted(unknown)}; valid: {', '.join(ROW_NAMES)}")
    # one fresh process per run (max_tasks_per_child): no state, nor maddpg-greedy's patch, carries over
    with ProcessPoolExecutor(max_workers=args.jobs, max_tasks_per_child=1) as pool:
        results = dict(zip(jobs, pool.map(run, jobs)))

    def row(name, value):  # value(env_id, seed) -> one run's number; a cell is mean +- std over seeds
        cells = [f"{np.mean(v):.2f} +- {np.std(v):.2f}" for v in ([value(e, s) for s in args.seeds] for e in args.env_ids)]
        return f"| {name} | " + " | ".join(cells) + " |"

    lines = ["| | " + " | ".join(args.env_ids) + " |", "|---|" + "---|" * len(args.env_ids)]
    for method in args.methods:
        lines.append(row(ROW_NAMES[method], lambda e, s: results[(method, e, s, args.task_seed_offset + s, args.num_test_tasks)]))
    lines.append(row("k = 1 stages solved, k = 2 not (task draws, no training)",
                     lambda e, s: k1_only_return(e, args.task_seed_offset + s, args.num_test_tasks)))
    table = "\n".join(lines)
    print(f"seeds {list(args.seeds)}, task_seed = {args.task_seed_offset} + seed, {args.num_test_tasks} test task(s) per seed")
    print(table)
    return table


if __name__ == "__main__":
    main(tyro.cli(Args))
