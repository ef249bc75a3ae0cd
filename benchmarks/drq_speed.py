"""Speed and memory of ce_drq.py and baselines/drq.py (CE from pixels), as ratios measured within one run of this file.

    OMP_NUM_THREADS=1 python benchmarks/drq_speed.py

One torch thread, no GPU. Times are the process's CPU time (on a machine shared with other jobs the wall clock
measures the neighbours as much as the code; with an idle machine and one thread the two agree, and both are
printed). Printed:

1. Rendering: frames per second of `envs.dmc.make_pixel_env` at 64x64 and 84x84 (action repeat 1, so a step is
   one physics step and one render).
2. The conv encoder stacked over N = 2 agents, batch 256, 64x64x9: the per-agent loop over channels-last images
   that `PixelEncoder` runs, against one grouped convolution (groups = N) and torch.func.vmap over the agents,
   forward without gradient and forward + backward.
3. The embedding of the collaborative reward, per update at N = 2 with full memory banks: e_phi's small CNN over
   the B queries and the 2 x 300 keys, its InfoNCE step on B anchors and positives, against one pass of the
   critics' conv encoder over B images (what a projection head on the critics' features would add at least, for
   its positives alone).
4. Per-agent update throughput of `ce_drq.py --num-agents 2 --no-col-training` (Replica-DrQ) against
   `baselines/drq.py`: N * steps/s(Replica) / steps/s(DrQ), both doing one update of every agent per agent step of
   all agents (target >= 0.9). Each is a fresh subprocess running the script's command line (`runpy`), whose
   `SummaryWriter.add_scalar` is wrapped to note the CPU time of each `charts/SPS` log (written only once learning
   has started); speed = env steps between the first such log and the last one before the final step (the final
   evaluation stays out), over the CPU time between them.
5. What the collaborative parts (e_phi and its InfoNCE update, the KNN reward over full memory banks, Eq. 5's
   sampling) add to the Replica run: steps/s(Replica) / steps/s(CE --col-unroll) - 1 (target <= 20%). The banks
   are filled before learning starts (`--memory-skip 1` for the warm-up only matters for how soon they fill).
6. Memory: the replay buffer's allocated bytes at 1e6 env steps (cartpole, action repeat 8; walker, 2; 64x64),
   checked twice: a buffer of cartpole's full size filled with frames grows the resident memory by its bytes, and
   a short real run's peak resident memory is its buffer's filled bytes plus a fixed rest (networks, 11 rendering
   contexts, libraries); the peak of a full run is that rest plus the full buffer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}


def best_cpu_ms(fn, repeats: int) -> float:
    """The smallest CPU time of `repeats` calls, in ms (the least disturbed by the neighbours)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return 1000 * best


def rendering(size: int, frames: int) -> tuple[float, float]:
    """(CPU, wall) frames per second of one pixel env at `size`, action repeat 1."""
    from envs.dmc import make_pixel_env

    env = make_pixel_env("cartpole-swingup", 0, image_size=size, action_repeat=1)
    action = env.action_space.sample()
    env.step(action)
    cpu, wall = time.process_time(), time.time()
    for _ in range(frames):
        env.step(action)
    cpu, wall = time.process_time() - cpu, time.time() - wall
    env.close()
    return frames / cpu, frames / wall


def conv_stacking(repeats: int) -> dict[str, tuple[float, float]]:
    """{variant: (forward ms, forward + backward ms)} of the DrQ conv encoder over 2 agents, batch 256, 64x64x9."""
    import torch
    import torch.nn.functional as F
    from torch.func import vmap

    import ce_drq

    N, B = 2, 256
    encoder = ce_drq.PixelEncoder((9, 64, 64), N)
    pixels = ce_drq.random_shift(torch.randint(0, 256, (B, 9, 64, 64), dtype=torch.uint8), 4)  # channels-last
    kernels = [(layer.weight.mT.reshape(N, layer.weight.shape[-1], -1, 3, 3).detach().requires_grad_(),
                layer.bias[:, 0].detach().requires_grad_()) for layer in encoder.layers]  # [N, C_out, C_in, 3, 3], [N, C_out]

    def grouped(x):
        h = x.float() / 255  # [B, C, H, W] channels-last; the first layer reads the same images for every agent
        for k, (weight, bias) in enumerate(kernels):
            h = F.relu(F.conv2d(h, weight.flatten(0, 1), bias.flatten(), stride=2, groups=1 if k == 0 else N))
        return h.reshape(B, N, -1).transpose(0, 1)  # [N, B, F]

    def one_agent(x, *params):
        h = x
        for weight, bias in zip(params[::2], params[1::2]):
            h = F.relu(F.conv2d(h, weight, bias, stride=2))
        return h.flatten(1)

    def vmapped(x):
        params = [p for pair in kernels for p in pair]
        return vmap(one_agent, in_dims=(None,) + (0,) * len(params))(x.float() / 255, *params)

    results = {}
    for name, fn in (("per-agent loop, channels-last (ours)", encoder), ("grouped conv (groups = N)", grouped),
                     ("torch.func.vmap over agents", vmapped)):  # fmt: skip
        assert fn(pixels).shape == (N, B, encoder.out_features)

        def forward():
            with torch.no_grad():
                fn(pixels)

        def forward_backward():
            fn(pixels).sum().backward()

        results[name] = (best_cpu_ms(forward, repeats), best_cpu_ms(forward_backward, repeats))
    return results


def embedding_costs(repeats: int) -> dict[str, float]:
    """CPU ms per update of e_phi's parts, and of one critic conv pass, at N = 2, batch 256, banks of 300."""
    import torch

    import ce_drq

    N, B, M = 2, 256, 300
    encoder, critic = ce_drq.PixelEmbedding((9, 64, 64), 64), ce_drq.DrQCritic(_env_like(), N, 50)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-4)
    batch = torch.randint(0, 256, (B, 9, 64, 64), dtype=torch.uint8)
    bank = torch.randint(0, 256, (N, M, 9, 64, 64), dtype=torch.uint8)

    def reward():  # queries and re-encoded keys in one pass, Eqs. 2-3
        with torch.no_grad():
            z = encoder(torch.cat([batch, bank.flatten(0, 1)]))
            novelty = ce_drq.novelty_of(z[:B], z[B:].view(N, M, -1), 20)
            ce_drq.collaborative_reward(novelty, 0.5)

    def info_nce():  # Eq. 4 on B anchors and B positives
        anchors, positives = encoder(torch.cat([batch, batch.flip(0)])).chunk(2)
        loss = ce_drq.info_nce_loss(anchors, positives, 0.07)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def critic_pass():
        with torch.no_grad():
            critic.encoder(ce_drq.random_shift(batch, 4))

    return {"e_phi reward (B queries + N x 300 keys)": best_cpu_ms(reward, repeats),
            "e_phi InfoNCE step (B pairs)": best_cpu_ms(info_nce, repeats),
            "one critic conv pass over B images, N = 2": best_cpu_ms(critic_pass, repeats)}  # fmt: skip


def _env_like():
    from types import SimpleNamespace

    import gymnasium as gym
    import numpy as np

    return SimpleNamespace(observation_space=gym.spaces.Box(0, 255, (9, 64, 64), np.uint8),
                           action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32))  # fmt: skip


def run_script(script: str, *flags: str) -> dict:
    """Run `script` with `flags` in a fresh subprocess: its learning-phase (wall, CPU) steps/s and its peak RSS."""
    total = int(flags[flags.index("--total-timesteps") + 1])
    with tempfile.TemporaryDirectory(prefix="drq_speed_") as workdir:
        record = Path(workdir) / "sps_logs.jsonl"
        command = [sys.executable, __file__, "--child-record", str(record), "--child-script", str(REPO_ROOT / script), "--", *flags]
        result = subprocess.run(command, cwd=workdir, env=CHILD_ENV, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        logs = [json.loads(line) for line in record.read_text().splitlines()]
    peak_rss = [r for r in logs if "peak_rss" in r][0]["peak_rss"]
    logs = [r for r in logs if "step" in r and r["step"] < total]
    if len(logs) < 2:
        raise RuntimeError(f"fewer than 2 `charts/SPS` logs before step {total}: raise the learning steps")
    steps = logs[-1]["step"] - logs[0]["step"]
    return {"wall": steps / (logs[-1]["wall"] - logs[0]["wall"]), "cpu": steps / (logs[-1]["cpu"] - logs[0]["cpu"]),
            "peak_rss": peak_rss}  # fmt: skip


def run_child(script: str, argv: list[str], record: str) -> None:
    """Run `script` with `argv` as its command line in this process, noting the times of its `charts/SPS` logs."""
    import atexit
    import runpy

    from torch.utils.tensorboard import SummaryWriter

    add_scalar, log = SummaryWriter.add_scalar, open(record, "a")

    def timed_add_scalar(self, tag, scalar_value, global_step=None, *args, **kwargs):
        if tag == "charts/SPS":
            log.write(json.dumps({"step": int(global_step), "wall": time.time(), "cpu": time.process_time()}) + "\n")
            log.flush()
        return add_scalar(self, tag, scalar_value, global_step, *args, **kwargs)

    def peak_rss():  # ru_maxrss: KiB on Linux
        log.write(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}) + "\n")
        log.flush()

    atexit.register(peak_rss)
    SummaryWriter.add_scalar = timed_add_scalar
    sys.path[0] = str(Path(script).resolve().parent)  # as `python script.py` sets it
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")


def buffer_bytes(total_timesteps: int, action_repeat: int, num_agents: int = 1, size: int = 64) -> int:
    """Allocated bytes of the default replay buffer (the whole run) of a pixel run: frames and rows."""
    import math

    import torch

    from baselines.drq import PixelReplayBuffer

    rounds = math.ceil(total_timesteps / (num_agents * action_repeat))
    rb = PixelReplayBuffer(rounds, num_agents, (9, size, size), 6, math.ceil(1000 / action_repeat), torch.device("meta"))
    return sum(t.nbytes for t in vars(rb).values() if isinstance(t, torch.Tensor))


def filled_buffer_rss_growth() -> tuple[int, int]:
    """(allocated bytes, resident-memory growth) of cartpole's 1e6-step buffer once every frame slot is written."""
    code = (
        "import torch, sys; sys.path.insert(0, %r)\n"
        "from baselines.drq import PixelReplayBuffer\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096  # resident pages\n"
        "before = rss()\n"
        "rb = PixelReplayBuffer(125000, 1, (9, 64, 64), 6, 125, torch.device('cpu'))\n"
        "allocated = rss()\n"
        "rb.frames.fill_(7)\n"
        "print(sum(t.nbytes for t in vars(rb).values() if isinstance(t, torch.Tensor)), allocated - before, rss() - before)\n"
    ) % str(REPO_ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=CHILD_ENV, capture_output=True, text=True, check=True).stdout
    nbytes, untouched, filled = map(int, out.split())
    return nbytes, untouched, filled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="cartpole-swingup")
    parser.add_argument("--learning-starts", type=int, default=300, help="agent steps of each agent before learning (fills the banks)")
    parser.add_argument("--learning-steps", type=int, default=40, help="measured updates of every agent")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the in-process measurements (best kept)")
    parser.add_argument("--child-record", help=argparse.SUPPRESS)  # internal: one measured run
    parser.add_argument("--child-script", help=argparse.SUPPRESS)
    if "--child-record" in sys.argv:
        split = sys.argv.index("--")
        a = parser.parse_args(sys.argv[1:split])
        return run_child(a.child_script, sys.argv[split + 1 :], a.child_record)
    a = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    import torch

    torch.set_num_threads(1)
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, torch threads 1, CPU; times are CPU time (best of {a.repeats})")

    print("1. rendering (shimmy render_mode='rgb_array' -> dm_control physics.render, MUJOCO_GL=egl):")
    for size in (64, 84):
        cpu_fps, wall_fps = rendering(size, 200)
        print(f"   {size}x{size}: {cpu_fps:.0f} frames per CPU second ({wall_fps:.0f} per wall second)", flush=True)

    print("2. conv encoder over N=2 agents, batch 256, 64x64x9 (forward no-grad / forward+backward, CPU ms):")
    for name, (fwd, fwd_bwd) in conv_stacking(a.repeats).items():
        print(f"   {name:40s} {fwd:7.0f} {fwd_bwd:7.0f}", flush=True)

    print("3. collaborative-reward embedding per update, N=2, B=256, banks of 300 (CPU ms):")
    for name, ms in embedding_costs(a.repeats).items():
        print(f"   {name:45s} {ms:7.1f}", flush=True)

    from envs.dmc import pixel_action_repeat

    repeat = pixel_action_repeat(a.env_id)
    common = ["--env-id", a.env_id, "--eval-episodes", "1", "--no-cuda"]

    def flags(num_agents: int, *extra: str) -> list[str]:
        round_steps = num_agents * repeat
        total = (a.learning_starts + a.learning_steps) * round_steps
        return [*common, "--total-timesteps", str(total), "--learning-starts", str(a.learning_starts * round_steps), "--log-every",
                str(2 * round_steps), "--eval-every", str(10 * total), *extra]  # fmt: skip

    runs = {"baselines/drq.py": ("baselines/drq.py", flags(1)),
            "ce_drq.py N=2 Replica": ("ce_drq.py", flags(2, "--no-col-training")),
            "ce_drq.py N=2 CE+unroll": ("ce_drq.py", flags(2, "--col-unroll", "--memory-skip", "1"))}  # fmt: skip
    print(f"4-5. {a.env_id} (action repeat {repeat}), 64x64, batch 256: {a.learning_starts} agent steps of each agent, "
          f"then {a.learning_steps} measured")  # fmt: skip
    speed = {}
    for name, (script, child_flags) in runs.items():
        speed[name] = run_script(script, *child_flags)
        s = speed[name]
        print(f"   {name:28s} {s['wall']:7.2f} env steps/s (wall) {s['cpu']:7.2f} (CPU)  peak RSS {s['peak_rss'] / 2**30:.2f} GiB", flush=True)
    drq, replica, ce = (speed[k]["cpu"] for k in runs)
    print(f"4. per-agent update throughput, Replica N=2 vs DrQ: 2 x {replica:.2f} / {drq:.2f} = {2 * replica / drq:.2f}x (target >= 0.9x)")
    print(f"5. collaborative parts at N=2, CE (+unroll) vs Replica: {100 * (replica / ce - 1):+.1f}% time (target <= +20%)")

    print("6. memory of the default replay buffer (the whole run), 64x64:")
    for task, repeat_ in (("cartpole", 8), ("walker", 2)):
        print(f"   {task} (action repeat {repeat_}), 1e6 env steps: {buffer_bytes(10**6, repeat_) / 2**30:.2f} GiB "
              f"(N=2: {buffer_bytes(10**6, repeat_, 2) / 2**30:.2f} GiB)")  # fmt: skip
    allocated, untouched, filled = filled_buffer_rss_growth()
    print(f"   check: cartpole's buffer: {allocated / 2**30:.3f} GiB allocated; resident memory +{untouched / 2**30:.3f} GiB "
          f"when allocated (zeroed), +{filled / 2**30:.3f} GiB once every frame is written")  # fmt: skip
    short_total, short_starts = 16000, 15920  # 2000 agent steps of cartpole, 10 updates, the final evaluation (10 envs)
    short = run_script("baselines/drq.py", "--env-id", "cartpole-swingup", "--total-timesteps", str(short_total),
                       "--learning-starts", str(short_starts), "--log-every", "16", "--eval-every", str(short_total),
                       "--no-cuda")  # fmt: skip
    rest = short["peak_rss"] - buffer_bytes(short_total, 8)
    print(f"   check: a 16k-step DrQ run on cartpole: peak RSS {short['peak_rss'] / 2**30:.2f} GiB = its buffer "
          f"{buffer_bytes(short_total, 8) / 2**30:.2f} GiB + the rest {rest / 2**30:.2f} GiB")  # fmt: skip
    for task, repeat_ in (("cartpole", 8), ("walker", 2)):
        print(f"   peak memory of a 1e6-step DrQ run, {task}: {(rest + buffer_bytes(10**6, repeat_)) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
