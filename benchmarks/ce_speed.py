"""Speed of ce_sac.py and baselines/sac.py, as ratios measured within one run of this file.

    OMP_NUM_THREADS=1 python benchmarks/ce_speed.py --cleanrl-script /tmp/cleanrl/cleanrl/sac_continuous_action.py

Every run is a fresh subprocess that runs the script's command line unchanged (`runpy` with the
user's argv: `ce_sac.py --env-id ...`), one torch thread, no GPU, in a temporary working directory.
Speed is learning-phase environment steps per second, taken the same way for every script: the
subprocess wraps `SummaryWriter.add_scalar` to note the time of each `charts/SPS` log, which every
script (CleanRL's too) writes only once learning has started, and the speed is steps between the
first such log and the last one before the final step (our scripts evaluate at the final step, so
evaluation stays out of the window; CleanRL has none), divided by the time between them. Two
clocks: wall time, and the process's CPU time. On a machine shared with other jobs the wall clock
measures the neighbours as much as the script, so the ratios use CPU time; with one thread and an
idle machine the two agree (both are printed). Printed ratios:

1. Per-agent update throughput of `ce_sac.py --num-agents 4` as Replica (all collaboration off,
   eval mode first) against `baselines/sac.py`: N * steps/s(Replica) / steps/s(SAC), since both do
   one update of every agent per environment step of all agents (target >= 0.9).
2. What the collaborative parts (encoder and its InfoNCE update, KNN reward, Eq. 5 sampling) add
   to the Replica run's time at N = 4: steps/s(Replica) / steps/s(CE with --col-unroll) - 1
   (target <= 15%).
3. `baselines/sac.py` against CleanRL's `sac_continuous_action.py` on the same DMC task (target >= 1.25).
   CleanRL's script is not part of this repository: pass its path with --cleanrl-script (a checkout
   of github.com/vwxyzjn/cleanrl: cleanrl/sac_continuous_action.py, whose `cleanrl_utils.buffers`
   is imported from the checkout's root). Without it this ratio is skipped with a note.
   Compatibility shims for gymnasium 1.4, applied here by monkeypatching (CleanRL's code is not
   changed): the vector env autoresets in the same step and renames `final_obs`/`final_info` to
   the `final_observation`/`final_info` (list) that the script reads; its observation space is a
   copy, because the script sets `single_observation_space.dtype = np.float32`, which would
   otherwise break our float32 cast wrapper; the env id is registered as `ce_speed/<task>-v0`,
   built by `envs.dmc.make_env`.

`--repeats R` runs the whole set R times, round robin, and keeps each script's best speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
N_AGENTS = 4


def learning_steps_per_second(records: list[dict], total_timesteps: int) -> tuple[float, float]:
    """(wall, CPU) steps/s between the first and the last `charts/SPS` log before the final step."""
    logs = [r for r in records if r["step"] < total_timesteps]
    if len(logs) < 2:
        raise RuntimeError(f"fewer than 2 `charts/SPS` logs before step {total_timesteps}: {records}")
    steps = logs[-1]["step"] - logs[0]["step"]
    return steps / (logs[-1]["wall"] - logs[0]["wall"]), steps / (logs[-1]["cpu"] - logs[0]["cpu"])


def run_and_measure(child_args: list[str], total_timesteps: int) -> tuple[float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    with tempfile.TemporaryDirectory(prefix="ce_speed_") as workdir:
        record = Path(workdir) / "sps_logs.jsonl"
        command = [sys.executable, __file__, "--child-record", str(record), *child_args]
        result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        records = [json.loads(line) for line in record.read_text().splitlines()]
        return learning_steps_per_second(records, total_timesteps)


def our_script(script: str, env_id: str, learning_starts: int, learning_steps: int, *flags: str) -> tuple[list[str], int]:
    total = learning_starts + learning_steps
    child_args = [
        "--child-script", str(REPO_ROOT / script), "--", "--env-id", env_id, "--total-timesteps", str(total),
        "--learning-starts", str(learning_starts), "--log-every", "100", "--eval-every", str(10 * total),
        "--eval-episodes", "1", "--no-cuda", *flags,
    ]  # fmt: skip
    return child_args, total


def cleanrl_script(script: str, env_id: str, learning_starts: int, learning_steps: int) -> tuple[list[str], int]:
    total = learning_starts + learning_steps
    child_args = [
        "--child-script", script, "--child-cleanrl-env", env_id, "--", "--env-id", f"ce_speed/{env_id}-v0",
        "--total-timesteps", str(total), "--learning-starts", str(learning_starts), "--no-cuda",
    ]  # fmt: skip
    return child_args, total


def run_child(script: str, argv: list[str], record: str, cleanrl_env: str | None) -> None:
    """Run `script` with `argv` as its command line in this process, noting the time of its `charts/SPS` logs."""
    import runpy
    import time

    from torch.utils.tensorboard import SummaryWriter

    add_scalar = SummaryWriter.add_scalar
    log = open(record, "a")

    def timed_add_scalar(self, tag, scalar_value, global_step=None, *args, **kwargs):
        if tag == "charts/SPS":
            log.write(json.dumps({"step": int(global_step), "wall": time.time(), "cpu": time.process_time()}) + "\n")
            log.flush()
        return add_scalar(self, tag, scalar_value, global_step, *args, **kwargs)

    SummaryWriter.add_scalar = timed_add_scalar
    sys.path[0] = str(Path(script).resolve().parent)  # as `python script.py` sets it (this file's folder otherwise)
    if cleanrl_env is not None:
        apply_cleanrl_shims(script, cleanrl_env)
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")


def apply_cleanrl_shims(script: str, env_id: str) -> None:
    """Let CleanRL's script run unchanged on gymnasium 1.4 and on `envs.dmc.make_env(env_id)`."""
    import copy

    import gymnasium as gym

    sys.path.insert(0, str(REPO_ROOT))
    from envs.dmc import make_env

    gym_id = f"ce_speed/{env_id}-v0"
    gym.register(gym_id, entry_point=lambda **kwargs: make_env(env_id, seed=0))  # the script reseeds on reset

    class SameStepSyncVectorEnv(gym.vector.SyncVectorEnv):
        """gymnasium < 1.0's autoreset as the script expects it: final observation and info of a
        finished episode in this step's infos, as `final_observation` and a list `final_info`."""

        def __init__(self, env_fns, **kwargs):
            super().__init__(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, **kwargs)
            self.single_observation_space = copy.deepcopy(self.single_observation_space)

        def step(self, actions):
            obs, rewards, terminations, truncations, infos = super().step(actions)
            if "final_obs" in infos:
                ended = infos.pop("_final_obs")
                infos["final_observation"] = infos.pop("final_obs")
                final_info = infos.pop("final_info")
                infos["final_info"] = [
                    {"episode": {k: v[i] for k, v in final_info["episode"].items()}} if ended[i] else None
                    for i in range(self.num_envs)
                ]
            return obs, rewards, terminations, truncations, infos

    gym.vector.SyncVectorEnv = SameStepSyncVectorEnv
    sys.path.insert(0, str(Path(script).resolve().parents[1]))  # the checkout root: cleanrl_utils


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cleanrl-script", help="path to CleanRL's cleanrl/sac_continuous_action.py (ratio 3)")
    parser.add_argument("--env-id", default="cartpole-swingup")
    parser.add_argument("--learning-starts", type=int, default=1000, help="random steps before learning (all agents)")
    parser.add_argument("--sac-steps", type=int, default=1500, help="learning-phase steps of sac.py and CleanRL")
    parser.add_argument("--ce-steps", type=int, default=800, help="learning-phase steps (all agents) of the N=4 runs")
    parser.add_argument(
        "--ce-learning-starts", type=int, default=6000,
        help="random steps before learning of the N=4 runs: 6000 = 300 bank slots x memory skip 5 x 4 agents, so the "
        "KNN runs over full memory banks, as it does for almost all of a real run",
    )
    parser.add_argument("--repeats", type=int, default=1, help="run the set this many times, keep each one's best")
    parser.add_argument("--child-record", help=argparse.SUPPRESS)  # internal: one measured run
    parser.add_argument("--child-script", help=argparse.SUPPRESS)
    parser.add_argument("--child-cleanrl-env", help=argparse.SUPPRESS)
    if "--child-record" in sys.argv:
        split = sys.argv.index("--")
        a = parser.parse_args(sys.argv[1:split])
        return run_child(a.child_script, sys.argv[split + 1 :], a.child_record, a.child_cleanrl_env)
    a = parser.parse_args()

    n = str(N_AGENTS)
    runs = {
        "baselines/sac.py": our_script("baselines/sac.py", a.env_id, a.learning_starts, a.sac_steps),
        f"ce_sac.py N={n} Replica": our_script(
            "ce_sac.py", a.env_id, a.ce_learning_starts, a.ce_steps, "--num-agents", n, "--no-col-training"
        ),
        f"ce_sac.py N={n} CE+unroll": our_script(
            "ce_sac.py", a.env_id, a.ce_learning_starts, a.ce_steps, "--num-agents", n, "--col-unroll"
        ),
    }
    if a.cleanrl_script:
        runs["CleanRL sac_continuous_action"] = cleanrl_script(a.cleanrl_script, a.env_id, a.learning_starts, a.sac_steps)
    else:
        print("note: no --cleanrl-script given, ratio 3 (sac.py vs CleanRL) is skipped")

    print(f"env {a.env_id}, OMP_NUM_THREADS=1, CPU, learning starts after {a.learning_starts} steps, {a.repeats} repeat(s)")
    print(f"N={n} runs: learning starts after {a.ce_learning_starts} steps (memory banks full), then {a.ce_steps} steps")
    print(f"      {'run':32s} {'steps/s (wall)':>15s} {'steps/s (CPU)':>14s}")
    best: dict[str, float] = {}
    for repeat in range(a.repeats):
        for name, (child_args, total) in runs.items():
            wall_sps, cpu_sps = run_and_measure(child_args, total)
            best[name] = max(best.get(name, 0.0), cpu_sps)
            print(f"  [{repeat + 1}] {name:32s} {wall_sps:15.1f} {cpu_sps:14.1f}", flush=True)

    sac_sps, replica_sps, ce_sps = (best[k] for k in list(runs)[:3])
    print("ratios (CPU-time steps/s, best of repeats):")
    per_agent = N_AGENTS * replica_sps / sac_sps
    print(f"1. per-agent update throughput, ce_sac.py N={n} Replica vs sac.py: "
          f"{n} x {replica_sps:.1f} / {sac_sps:.1f} = {per_agent:.2f}x  (target >= 0.9x)")  # fmt: skip
    print(f"2. collaborative parts' cost at N={n}, CE (+unroll) vs Replica, same steps: "
          f"{100 * (replica_sps / ce_sps - 1):+.1f}% time  (target <= +15%)")  # fmt: skip
    if a.cleanrl_script:
        cleanrl_sps = best["CleanRL sac_continuous_action"]
        print(f"3. learning-phase steps/s, sac.py vs CleanRL sac_continuous_action.py on {a.env_id}: "
              f"{sac_sps:.1f} / {cleanrl_sps:.1f} = {sac_sps / cleanrl_sps:.2f}x  (target >= 1.25x)")  # fmt: skip


if __name__ == "__main__":
    main()
