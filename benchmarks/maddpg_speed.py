"""Speed of the MADDPG update (baselines/maddpg.py, the learner MESA shares) against another version of the
same file, by default the committed one (`git show HEAD:baselines/maddpg.py`), as a ratio measured within one
run of this file; and a check that both compute the same update.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl python benchmarks/maddpg_speed.py --env-id mpe-climb --episodes 3 --repeats 2

Each version runs in a fresh subprocess (one torch thread, CPU): the script's own env, MADDPG, TrajectoryBuffer,
run_episode and train_steps with the script's paper defaults for --env-id (mpe-climb: batch 300 trajectories x
100 steps, one update per 100 env steps), `--fill` uniformly random episodes into the replay buffer (not timed),
then `--episodes` learning-phase episodes (explore policy, store, the updates train_steps makes), timed in the
process's CPU time (`time.process_time`: user + system, so allocation churn in the kernel counts). The speed is
learning-phase env steps per CPU second; wall time is printed too, but on a shared machine only CPU time
compares. `--repeats R` alternates the versions R times and keeps each one's best.

Same maths: the children start from the same seed, so after the timed episodes (`--episodes` updates on
mpe-climb) both learners must hold the same networks, targets and Adam states; the largest absolute difference
is printed (0.0: bit for bit) and the run fails above `--atol`.

Measured (2026-11-30, mpe-climb 2 agents x 5 landmarks, a 2-core machine, `--repeats 3 --baseline fc58ae8`, the
code before any of the speed-ups): the working tree 7.4-7.7 ms per env step with the machine's other jobs stopped,
7.8-8.5 ms beside them; fc58ae8 23.0-30.7 ms and 17.7-32.4 ms (its update is memory-bound, two thirds of it
zero-filled gradient buffers, see StackedGRUNet.forward, so its time swings with the machine's memory traffic).
Best against best: 3.08x and 3.76x on the quiet machine (two runs), 2.27x beside the other jobs; per round
2.3x-4.0x. What the speed-ups are: unbind instead of per-step slices (most of it), the cpu-memory block (6%),
the GRU cell as addcmul/lerp with tanh = 2 sigmoid(2x) - 1 (5-6%). Same maths: the largest parameter difference
after 3 updates is 1.5e-8 (the tanh); without that last change, bit for bit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_module(path: str, name: str):
    sys.path.insert(0, str(REPO_ROOT))  # for envs/, wherever the file lies (a HEAD copy lies in a temp dir)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(path: str, env_id: str, fill: int, episodes: int, seed: int, out: str) -> None:
    """Time `episodes` learning-phase episodes of the MADDPG in `path`; write speed and final state to `out`."""
    import torch

    torch.set_num_threads(1)
    m = load_module(path, "maddpg_under_test")
    if hasattr(m, "keep_freed_memory"):  # what the script's main() does first, where it does it
        m.keep_freed_memory()
    args = m.resolve_args(m.Args(env_id=env_id, seed=seed, cuda=False))
    args.learning_starts = 0  # every timed episode is a learning-phase one
    _, test_tasks = m.draw_tasks(args, {})
    env = m.make_env(env_id, test_tasks[0])
    spaces = m.env_spaces(env)
    n, obs_dim, act_dim, discrete, _, _ = spaces
    rng, sample_generator = m.seed_everything(seed, True)
    device = torch.device("cpu")
    learner = m.MADDPG(n, obs_dim, act_dim, discrete, args, device)
    rb = m.TrajectoryBuffer(args.buffer_size, n, env.max_steps, obs_dim, act_dim, device)
    warmup, explore = m.random_policy(spaces, rng), m.learner_policy(learner, "explore", device)
    for episode in range(fill):  # the replay the updates sample from (not timed)
        rb.add(m.run_episode(env, warmup, episode, spaces))
    global_step, next_train = 0, args.train_frequency
    cpu, wall = time.process_time(), time.time()
    for episode in range(fill, fill + episodes):
        ep = m.run_episode(env, explore, episode, spaces)
        rb.add(ep)
        global_step += int(ep["mask"].sum())
        _, next_train = m.train_steps(learner, rb, global_step, next_train, args, sample_generator)
    cpu, wall = time.process_time() - cpu, time.time() - wall
    updates = (next_train - args.train_frequency) // args.train_frequency
    torch.save(learner.state_dict(), out + ".pt")
    with open(out, "w") as f:
        json.dump({"steps": global_step, "updates": updates, "cpu": cpu, "wall": wall}, f)


def flatten(state, prefix=""):
    """{dotted name: tensor} of the nested state dict of MADDPG.state_dict() (Adam's too)."""
    import torch

    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return {}
    out = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-id", default="mpe-climb")
    parser.add_argument("--episodes", type=int, default=3, help="timed learning-phase episodes per run")
    parser.add_argument("--fill", type=int, default=20, help="random episodes in the replay before timing")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each version, alternated; the best counts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline", default="HEAD", help="git revision of baselines/maddpg.py to compare against")
    parser.add_argument("--atol", type=float, default=1e-5, help="largest parameter difference accepted as the same maths")
    parser.add_argument("--child", nargs=5, metavar=("PATH", "ENV_ID", "FILL", "EPISODES", "OUT"), help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.child:
        path, env_id, fill, episodes, out = cli.child
        child(path, env_id, int(fill), int(episodes), cli.seed, out)
        return

    import torch

    tmp = tempfile.mkdtemp(prefix="maddpg_speed_")
    old_path = os.path.join(tmp, "maddpg_old.py")
    source = subprocess.run(["git", "show", f"{cli.baseline}:baselines/maddpg.py"], cwd=REPO_ROOT, check=True,
                            capture_output=True, text=True).stdout
    Path(old_path).write_text(source)
    versions = {f"{cli.baseline}": old_path, "working tree": str(REPO_ROOT / "baselines" / "maddpg.py")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    best = {}
    for r in range(cli.repeats):
        for name, path in versions.items():
            out = os.path.join(tmp, f"{len(best)}_{r}_{name.replace(' ', '_')}.json")
            command = [sys.executable, __file__, "--seed", str(cli.seed), "--child", path, cli.env_id, str(cli.fill),
                       str(cli.episodes), out]
            subprocess.run(command, env=env, check=True)
            with open(out) as f:
                result = json.load(f)
            result["state"] = out + ".pt"
            sps = result["steps"] / result["cpu"]
            print(f"{name:>14}: {result['steps']} env steps, {result['updates']} updates, {result['cpu']:.2f} CPU s "
                  f"({sps:.1f} steps per CPU s, {1000 / sps:.1f} ms per step), {result['wall']:.2f} wall s", flush=True)
            if name not in best or sps > best[name]["sps"]:
                best[name] = {**result, "sps": sps}
    old, new = (best[name] for name in versions)
    print(f"speed ratio (working tree / {cli.baseline}), learning-phase env steps per CPU second, best of "
          f"{cli.repeats}: {new['sps'] / old['sps']:.2f}x")
    a, b = (flatten(torch.load(v["state"], weights_only=True)) for v in (old, new))
    assert a.keys() == b.keys(), "the two versions' learner states hold different entries"
    worst = max(((a[k].double() - b[k].double()).abs().max().item(), k) for k in a if a[k].is_floating_point())
    exact = all(torch.equal(a[k], b[k]) for k in a)
    print(f"same maths after {new['updates']} updates: largest difference {worst[0]:.3g} ({worst[1]}), "
          f"bit for bit: {exact}")
    if worst[0] > cli.atol:
        sys.exit(f"error: the versions' learners differ by {worst[0]:.3g} > --atol {cli.atol}")


if __name__ == "__main__":
    main()
