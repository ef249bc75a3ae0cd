"""Speed of ce_rnd.py against ce_sac.py's Replica and baselines/sac.py, as ratios measured within one run of this file.

    OMP_NUM_THREADS=1 python benchmarks/rnd_speed.py --repeats 3

Measured as benchmarks/ce_speed.py measures (its `run_and_measure` runs here): every run is a
fresh subprocess that runs the script's own command line, one torch thread, no GPU, in a
temporary working directory; the speed is learning-phase environment steps per second between
the first and the last `charts/SPS` log before the final step, in the process's CPU time (wall
time is printed too). `--repeats R` runs the whole set R times, round robin, and keeps each run's
best speed. Printed ratios:

(a) What the RND parts (normalisers, predictor and target passes, the predictors' update, the
    reward) add to the time of `ce_sac.py --num-agents 4 --no-col-training` (Replica), for each
    `--rnd-mode` of `ce_rnd.py --num-agents 4`: steps/s(Replica) / steps/s(ce_rnd) - 1
    (target <= 15%). Both make one update of all 4 agents per env step on the same batches.
(b) `ce_rnd.py --num-agents 1` (the RND baseline) against `baselines/sac.py` plus the RND share:
    steps/s(ce_rnd N=1) / steps/s(SAC + RND), where 1 / steps/s(SAC + RND) = 1 / steps/s(sac.py)
    + t_rnd, and t_rnd is the CPU time of one update's RND phase (the loop's lines between
    `# CE: RND NOVELTY` and the relabeled reward, and the observation normaliser's update once a
    round, with ce_rnd's own functions and networks, the same batch size and observation width),
    timed alone in a subprocess (target >= 0.9x): ce_rnd N=1 should cost what SAC and RND cost, and
    nothing on top. The same t_rnd at N = 4 is printed next to (a): the time the RND phase alone
    would add to Replica.

What to expect from the arithmetic: counted in passes of a 256x256 layer over a batch, one SAC
agent's update makes 16 (critics, target critics and actor, forward and backward), one RND
module's reward 2.5 (target and predictor forward, 256-256 and the 64-wide output) and its update
2.5 more (backward) on the same rows, or 5 on rows of its own. Against Replica's 4 x 16 = 64:
shared (one module) 5 / 64 = 8%; own (4 modules, the reward on every row, the update on a separate
quarter batch) 4 x (2.5 + 5 / 4) / 64 = 23%; per-agent (4 modules, all rows) 4 x 5 / 64 = 31%.
The 15% of (a) fits the shared module only: at 4 modules the reward pass alone is 16%.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ce_speed import REPO_ROOT, our_script, run_and_measure  # noqa: E402

N_AGENTS = 4
MODES = ("shared", "own", "per-agent")


def rnd_phase_seconds(env_id: str, num_agents: int, mode: str, batch_size: int, updates: int) -> float:
    """CPU seconds of one update's RND phase of ce_rnd.py's loop, timed alone (the child below)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    command = [sys.executable, __file__, "--child-rnd-phase", env_id, str(num_agents), mode, str(batch_size), str(updates)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def child_rnd_phase(env_id: str, num_agents: int, mode: str, batch_size: int, updates: int) -> None:
    """Print the CPU seconds per update of the RND phase, as ce_rnd.main's loop runs it. Keep in step
    with the loop: the lines below are that phase with its inputs made up (a random batch)."""
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    import ce_rnd
    from envs.dmc import make_env

    torch.set_num_threads(1)
    torch.manual_seed(0)
    N, P = num_agents, 1 if mode == "shared" else num_agents
    obs_dim = make_env(env_id, 0).observation_space.shape[0]
    rnd_predictor, rnd_target = ce_rnd.RNDNetwork(obs_dim, 64, P), ce_rnd.RNDNetwork(obs_dim, 64, P).requires_grad_(False)
    rnd_optimizer = torch.optim.Adam(rnd_predictor.parameters(), lr=3e-4, fused=True)
    device = torch.device("cpu")
    obs_moments = ce_rnd.update_running_moments(ce_rnd.RunningMoments.empty(P, obs_dim, device), torch.randn(P, 1000, obs_dim))
    error_moments = ce_rnd.RunningMoments.empty(P, 1, device)
    buffer_next_obs = torch.randn(10**5, obs_dim)  # the replay buffer's afterstates
    rewards = torch.randn(batch_size)
    round_rows = ce_rnd.rnd_training_rows(torch.arange(N), N, mode)

    def phase(k, idx):
        nonlocal obs_moments, error_moments
        if k % N == 0:  # the afterstates of a round (N updates per round), in the collection phase of the loop
            next_obs_t = torch.randn(N, obs_dim)
            round_obs = next_obs_t.expand(P, N, obs_dim) if round_rows is None else next_obs_t[round_rows]
            obs_moments = ce_rnd.update_running_moments(obs_moments, round_obs)
        x = ce_rnd.normalise_observation(buffer_next_obs[idx], obs_moments, 5.0)  # [P, B, O]
        train_rows = ce_rnd.rnd_training_rows(idx, N, mode)
        if train_rows is None:
            error = train_error = ce_rnd.rnd_error(rnd_predictor, rnd_target, x)
        else:
            with torch.no_grad():
                error = ce_rnd.rnd_error(rnd_predictor, rnd_target, x)
            x_train = ce_rnd.normalise_observation(buffer_next_obs[train_rows], obs_moments, 5.0)
            train_error = ce_rnd.rnd_error(rnd_predictor, rnd_target, x_train)
        error_moments = ce_rnd.update_running_moments(error_moments, error.detach()[..., None])
        novelty = ce_rnd.intrinsic_reward(error.detach(), error_moments)  # [P, B]
        rnd_losses = train_error.mean(1)  # [P]
        rnd_optimizer.zero_grad(set_to_none=False)
        rnd_losses.sum().backward()
        rnd_optimizer.step()
        intrinsic = ce_rnd.rnd_collaborative_reward(novelty, N, mode, 0.5, "mean")  # [N, B]
        return rewards + 0.2 * intrinsic  # [N, B]

    indices = torch.randint(10**5, (2 * updates, batch_size))
    for k, idx in enumerate(indices[:updates]):  # warm-up: allocator, Adam's state
        phase(k, idx)
    start = time.process_time()
    for k, idx in enumerate(indices[updates:]):
        phase(k, idx)
    print((time.process_time() - start) / updates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="cartpole-swingup")
    parser.add_argument("--learning-starts", type=int, default=1000, help="random steps before learning (all agents)")
    parser.add_argument("--sac-steps", type=int, default=1500, help="learning-phase steps of the N=1 runs")
    parser.add_argument("--ce-steps", type=int, default=800, help="learning-phase steps (all agents) of the N=4 runs")
    parser.add_argument("--phase-updates", type=int, default=300, help="updates timed for the RND phase alone")
    parser.add_argument("--repeats", type=int, default=1, help="run the set this many times, keep each one's best")
    if len(sys.argv) > 1 and sys.argv[1] == "--child-rnd-phase":  # internal: the RND phase timed alone
        env_id, num_agents, mode, batch_size, updates = sys.argv[2:7]
        return child_rnd_phase(env_id, int(num_agents), mode, int(batch_size), int(updates))
    a = parser.parse_args()

    n = str(N_AGENTS)
    runs = {
        "baselines/sac.py": our_script("baselines/sac.py", a.env_id, a.learning_starts, a.sac_steps),
        "ce_rnd.py N=1": our_script("ce_rnd.py", a.env_id, a.learning_starts, a.sac_steps, "--num-agents", "1"),
        f"ce_sac.py N={n} Replica": our_script(
            "ce_sac.py", a.env_id, a.learning_starts, a.ce_steps, "--num-agents", n, "--no-col-training"
        ),
    }
    for mode in MODES:
        runs[f"ce_rnd.py N={n} {mode}"] = our_script(
            "ce_rnd.py", a.env_id, a.learning_starts, a.ce_steps, "--num-agents", n, "--rnd-mode", mode
        )

    print(f"env {a.env_id}, OMP_NUM_THREADS=1, CPU, learning starts after {a.learning_starts} steps, {a.repeats} repeat(s)")
    print(f"N=1 runs: {a.sac_steps} learning steps; N={n} runs: {a.ce_steps}")
    print(f"      {'run':32s} {'steps/s (wall)':>15s} {'steps/s (CPU)':>14s}")
    best: dict[str, float] = {}
    phase: dict[tuple[int, str], float] = {}
    for repeat in range(a.repeats):
        for name, (child_args, total) in runs.items():
            wall_sps, cpu_sps = run_and_measure(child_args, total)
            best[name] = max(best.get(name, 0.0), cpu_sps)
            print(f"  [{repeat + 1}] {name:32s} {wall_sps:15.1f} {cpu_sps:14.1f}", flush=True)
        for key in [(1, "shared")] + [(N_AGENTS, mode) for mode in MODES]:
            seconds = rnd_phase_seconds(a.env_id, *key, 256, a.phase_updates)
            phase[key] = min(phase.get(key, float("inf")), seconds)
            print(f"  [{repeat + 1}] RND phase alone, N={key[0]} {key[1]:9s} {1000 * seconds:8.2f} ms CPU per update", flush=True)

    print("ratios (CPU-time steps/s, best of repeats):")
    replica = best[f"ce_sac.py N={n} Replica"]
    for mode in MODES:
        rnd = best[f"ce_rnd.py N={n} {mode}"]
        # N updates per round of N env steps: one update per env step, so t_rnd per update is t_rnd per env step
        alone = 100 * phase[(N_AGENTS, mode)] * replica
        print(f"(a) RND parts at N={n}, --rnd-mode {mode:9s}: {replica:.1f} / {rnd:.1f} steps/s = "
              f"{100 * (replica / rnd - 1):+.1f}% time over Replica  (target <= +15%; the RND phase alone: +{alone:.1f}%)")  # fmt: skip
    sac_sps, rnd1 = best["baselines/sac.py"], best["ce_rnd.py N=1"]
    expected = 1 / (1 / sac_sps + phase[(1, "shared")])
    print(f"(b) ce_rnd.py N=1 vs sac.py + RND phase: {rnd1:.1f} / (1 / (1 / {sac_sps:.1f} + {1000 * phase[(1, 'shared')]:.2f} ms)) = "
          f"{rnd1:.1f} / {expected:.1f} = {rnd1 / expected:.2f}x  (target >= 0.9x; vs sac.py alone {rnd1 / sac_sps:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
