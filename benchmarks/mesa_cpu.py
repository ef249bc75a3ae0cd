"""MADDPG and MESA on one MPE task and one Swimmer task at budgets a CPU allows: their learning curves, in a report.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl python benchmarks/mesa_cpu.py                  # run what is missing, then report
    python benchmarks/mesa_cpu.py --report-only --out benchmarks/reports/mesa-cpu  # the report from finished runs

The paper's budgets are GPU-days (MPE: 30 training tasks x 500k collection steps, 3M exploration-policy steps and
3M steps per test task); `python mesa_maddpg.py --env-id mpe-climb --n-agents 2 --num-actions 5` and
`python mesa_maddpg.py --env-id swimmer-climb` run them, `python benchmarks/reproduce.py mesa-table2 --tasks
mpe-climb swimmer-climb --launcher slurm` on a cluster. What this file runs instead, all with seed 1 and one
task draw (task seed 101, 4 training tasks, 1 test task, so that MADDPG learns the very test task MESA
meta-tests on), every other setting the paper's except a 10k-step random warm-up (Table 1: 50k):

    swimmer-maddpg  baselines/maddpg.py, 200k env steps on the test task
    swimmer-mesa    mesa_maddpg.py: 200k collection steps (50k per training task), 100k exploration-policy
                    steps (E = 2), then 200k env steps on the test task
    mpe-maddpg      the same on mpe-climb (2 agents, 5 landmarks) with 100k env steps
    mpe-mesa        100k collection steps, 50k exploration-policy steps, 100k env steps on the test task

Each run is the script's command line in `<out>/<name>/` (its `runs/` folder there, stdout and stderr in
`log.txt`); a run whose folder holds a result is not run again. The report, `<out>/report.md` with
`<out>/curves.png`, lists each run's command, its CPU time, its final greedy test return (summed over the
episode: Swimmer's sub-optimal "nobody near the target" return is 500 of 1000, MPE's 50 of 100 at 100 steps)
and its evaluations every 10k env steps on the test task (TensorBoard: `eval/episodic_return` of MADDPG,
`eval/episodic_return_task0` of MESA's meta-testing), and what MESA's meta-training found (the size of M*, the
clusters the exploration policies covered).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DRAW = ["--seed", "1", "--task-seed", "101", "--num-train-tasks", "4", "--num-test-tasks", "1",
        "--learning-starts", "10000", "--eval-frequency", "10000"]
MPE = ["--env-id", "mpe-climb", "--n-agents", "2", "--num-actions", "5"]
SWIMMER = ["--env-id", "swimmer-climb"]
SUBOPTIMAL = {"swimmer": 500, "mpe": 50}  # the summed return of "nobody on the target", every step
RUNS = {  # name: (script, flags)
    "swimmer-maddpg": ("baselines/maddpg.py", SWIMMER + DRAW + ["--test-task-index", "0", "--total-timesteps", "200000"]),
    "swimmer-mesa": ("mesa_maddpg.py", SWIMMER + DRAW + ["--collect-steps", "200000", "--meta-train-steps", "100000",
                                                         "--total-timesteps", "200000"]),
    "mpe-maddpg": ("baselines/maddpg.py", MPE + DRAW + ["--test-task-index", "0", "--total-timesteps", "100000"]),
    "mpe-mesa": ("mesa_maddpg.py", MPE + DRAW + ["--collect-steps", "100000", "--meta-train-steps", "50000",
                                                 "--total-timesteps", "100000"]),
}


def run_folder(out: Path, name: str) -> Path | None:
    """The script's run folder under <out>/<name>/runs/ (the newest), or None."""
    folders = sorted((out / name / "runs").glob("*/settings.json"), key=lambda p: p.stat().st_mtime)
    return folders[-1].parent if folders else None


def run(out: Path, name: str) -> None:
    """Run one entry of RUNS in <out>/<name>/ unless its result exists; note its CPU time in cpu.json."""
    folder = run_folder(out, name)
    if folder is not None and (folder / "result.json").exists():
        return
    script, flags = RUNS[name]
    work = out / name
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    before, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    print(f"{name}: python {script} {' '.join(flags)}", flush=True)
    with open(work / "log.txt", "a") as log:
        code = subprocess.run([sys.executable, str(REPO_ROOT / script), *flags], cwd=work, env=env, stdout=log,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:  # one line, not a traceback: the script's own message is the last line of its log
        sys.exit(f"error: {name} exited with {code}; see {work / 'log.txt'}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    (work / "cpu.json").write_text(json.dumps({"cpu_s": cpu, "wall_s": time.time() - wall}))


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of a run folder's TensorBoard files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def summary(out: Path, name: str) -> dict | None:
    folder = run_folder(out, name)
    if folder is None or not (folder / "result.json").exists():
        return None
    values = scalars(folder)
    curve = values.get("eval/episodic_return") or values.get("eval/episodic_return_task0") or []
    cpu = json.loads((out / name / "cpu.json").read_text()) if (out / name / "cpu.json").exists() else {}
    result = json.loads((folder / "result.json").read_text())
    info = {"curve": curve, "cpu_s": cpu.get("cpu_s"), "test_return": result.get("test_return")}
    episodes = [value for _, value in values.get("charts/episodic_return") or values.get("charts/episodic_return_task0") or []]
    if episodes:  # the learner's own training episodes on the test task
        suboptimal = SUBOPTIMAL[name.split("-")[0]]
        info["episodes"] = (len(episodes), sum(value > 0 for value in episodes),
                            sum(value > suboptimal for value in episodes), max(episodes))
    if "charts/mstar_size" in values:
        info["mstar_size"] = int(values["charts/mstar_size"][-1][1])
    if "charts/clusters_covered" in values:
        info["clusters_covered"] = [int(v) for _, v in values["charts/clusters_covered"]]
    return info


def write_report(out: Path) -> Path:
    data = {name: summary(out, name) for name in RUNS}
    lines = ["# MADDPG and MESA on one MPE and one Swimmer task at CPU budgets", "",
             f"Written {datetime.date.today()} by `python benchmarks/mesa_cpu.py` from the runs under `{out}`; each run's settings in its "
             "`runs/*/settings.json`. Seed 1, task seed 101, 4 training tasks, the first test task; one torch "
             "thread. Returns are summed over the episode (Swimmer: 1000 steps, optimum 1000, sub-optimal 500; "
             "MPE: 100 steps, optimum 100, sub-optimal 50).", "",
             "| run | command | CPU time | final test return |", "|---|---|---|---|"]
    for name, info in data.items():
        script, flags = RUNS[name]
        cpu = f"{info['cpu_s'] / 60:.0f} min" if info and info["cpu_s"] else "-"
        final = f"{info['test_return']:.1f}" if info and info["test_return"] is not None else "not run"
        lines.append(f"| {name} | `python {script} {' '.join(flags)}` | {cpu} | {final} |")
    lines += ["", "Greedy evaluations on the test task (env steps of the learner on that task: for MESA, of its "
              "meta-testing):", ""]
    for name, info in data.items():
        if info and info["curve"]:
            points = ", ".join(f"{step / 1000:g}k: {value:.1f}" for step, value in info["curve"])
            lines.append(f"- {name}: {points}")
    lines += ["", "The learner's training episodes on the test task (for MESA, its meta-testing episodes, "
              "exploration policies' included):", ""]
    for name, info in data.items():
        if info and "episodes" in info:
            count, rewarded, above, best = info["episodes"]
            lines.append(f"- {name}: {count} episodes, {rewarded} with a return above 0, {above} above the "
                         f"sub-optimal {SUBOPTIMAL[name.split('-')[0]]}, the best {best:.1f}")
    lines.append("")
    for name, info in data.items():
        if info and "mstar_size" in info:
            lines.append(f"- {name} meta-training: |M*| = {info['mstar_size']} high-reward transitions; "
                         f"KMeans clusters covered after each exploration policy: {info.get('clusters_covered')}")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    plot(out, data)
    return path


def plot(out: Path, data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, env in zip(axes, ("mpe", "swimmer")):
        for method in ("maddpg", "mesa"):
            info = data.get(f"{env}-{method}")
            if info and info["curve"]:
                steps, values = zip(*info["curve"])
                ax.plot([s / 1000 for s in steps], values, marker="o", label=method.upper())
        ax.set_title({"mpe": "mpe-climb (2 agents, 5 landmarks)", "swimmer": "swimmer-climb"}[env])
        ax.set_xlabel("env steps on the test task (k)")
        ax.set_ylabel("greedy test return")
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/reports/mesa-cpu"), help="folder of the runs and the report")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS), help="which runs (default: all)")
    parser.add_argument("--report-only", action="store_true", help="write the report from finished runs; run nothing")
    args = parser.parse_args()
    if not args.report_only:
        for name in args.runs:
            run(args.out, name)
    print(f"report: {write_report(args.out)}")


if __name__ == "__main__":
    main()
