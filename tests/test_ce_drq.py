"""ce_drq.py and baselines/drq.py (CE from pixels, paper 5.3) and the pixel environments they train on.

Covers: the pixel environment (shape, dtype, frame stack, action repeat, truncation), DrQ's random shift on
a hand-made image, the replay buffer's frame stacks against the stacks the environment returned (episode
starts, the wrap of both rings, two agents), CE with one agent and no collaboration = DrQ tensor for tensor,
same seed twice, smoke runs through main() (cartpole-swingup, reacher-easy) and the command line (reacher-easy), the ablation
flags, `--save-model` loadable with weights_only=True, kill -9 + `--resume` bit for bit, and bad input.

Runs are tiny: 32x32 images (the smallest the encoder takes is 31), an action repeat of 20 so that an
episode is 50 agent steps, batches of 16. Rendering is the cost here (Mesa's llvmpipe on a CPU machine,
about 20 ms a frame). Budget: about 3 minutes on the shared 2-core machine, one torch thread.
"""

import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

import ce_drq
from baselines import drq
from envs.dmc import PixelObservation, make_pixel_env, pixel_action_repeat

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"drq": (drq, REPO_ROOT / "baselines" / "drq.py"), "ce": (ce_drq, REPO_ROOT / "ce_drq.py")}
SUBPROCESS_ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}

# 60 agent steps of DrQ (30 rounds of two CE agents), learning after 400 env steps (20 agent steps of DrQ, 10 of
# each CE agent), one evaluation episode of 50 agent steps
TINY = dict(
    env_id="cartpole-swingup", image_size=32, action_repeat=20, total_timesteps=1200, learning_starts=400,
    batch_size=16, eval_every=1200, eval_episodes=1, log_every=200, cuda=False,
)  # fmt: skip
TINY_CLI = [
    "--image-size", "32", "--action-repeat", "20", "--total-timesteps", "1200", "--learning-starts", "400",
    "--batch-size", "16", "--eval-every", "1200", "--eval-episodes", "1", "--log-every", "200", "--no-cuda",
]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(module, workdir: Path, **overrides) -> SimpleNamespace:
    """main(Args(...)) with --save-model, in `workdir`: the result and the saved model (loaded with weights_only=True)."""
    workdir.mkdir(exist_ok=True)
    old_cwd = os.getcwd()
    os.chdir(workdir)
    try:
        args = module.Args(**{**TINY, "save_model": True, **overrides})
        out = module.main(args)
    finally:
        os.chdir(old_cwd)
    run_dir = workdir / "runs" / out["run_name"]
    return SimpleNamespace(out=out, model=torch.load(run_dir / f"{args.exp_name}.pt", weights_only=True), run_dir=run_dir)


def tensors(model: dict, *parts: str) -> dict[str, torch.Tensor]:
    flat = {}
    for part in parts:
        items = model[part].items() if isinstance(model[part], dict) else [("", model[part])]
        flat.update({f"{part}.{k}": v for k, v in items})
    return flat


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run folder but the wall-clock SPS."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"] if tag != "charts/SPS"}


def run_cli(script: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=SUBPROCESS_ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


# --- the pixel environment ---


def test_pixel_env_stacks_frames_repeats_actions_and_truncates_at_1000_env_steps():
    assert [pixel_action_repeat(t) for t in ("cartpole-swingup", "reacher-easy", "cheetah-run", "ball_in_cup-catch",
                                             "walker-walk", "finger-spin", "quadruped-run")] == [8, 4, 4, 4, 2, 2, 2]  # fmt: skip
    env = make_pixel_env("cartpole-swingup", seed=0, image_size=32, action_repeat=100)
    assert env.observation_space.shape == (9, 32, 32) and env.observation_space.dtype == np.uint8
    assert env.action_space.low.min() == -1 and env.action_space.high.max() == 1
    assert env.episode_length == 10  # 1000 env steps / 100
    obs, _ = env.reset(seed=0)
    assert obs.shape == (9, 32, 32) and obs.dtype == np.uint8 and obs.std() > 0  # a picture, not a blank
    assert (obs[:3] == obs[3:6]).all() and (obs[3:6] == obs[6:]).all()  # the first frame, three times
    for t in range(1, 11):
        next_obs, reward, terminated, truncated, _ = env.step(np.ones(1))
        assert (next_obs[:6] == obs[3:]).all()  # the stack moves on by one frame
        assert 0 <= reward <= 100 and not terminated  # the sum of 100 rewards in [0, 1]
        assert truncated == (t == 10), f"agent step {t}"
        obs = next_obs
    env.close()


# --- DrQ's random shift ---


def test_random_shift_at_known_offsets_gives_known_pixels(monkeypatch):
    image = torch.arange(36, dtype=torch.uint8).view(1, 1, 6, 6).repeat(3, 1, 1, 1)  # pixel (r, c) = 6 r + c
    offsets = torch.tensor([[4, 4], [3, 5], [0, 8]])  # (dy, dx) in {0, ..., 2 pad}: centred, up-left by 1 / 1, far down-right
    monkeypatch.setattr(torch, "randint", lambda *args, **kwargs: offsets)
    shifted = drq.random_shift(image, pad=4)[:, 0]
    assert shifted[0].tolist() == image[0, 0].tolist()  # (4, 4): the image itself
    # (3, 5): rows r - 1, columns c + 1, the edge repeated where that leaves the image
    assert shifted[1].tolist() == [[1, 2, 3, 4, 5, 5], [1, 2, 3, 4, 5, 5], [7, 8, 9, 10, 11, 11],
                                   [13, 14, 15, 16, 17, 17], [19, 20, 21, 22, 23, 23], [25, 26, 27, 28, 29, 29]]  # fmt: skip
    # (0, 8): rows r - 4 (the first row repeated 4 times), columns c + 4 (the last column repeated)
    assert shifted[2].tolist() == [[4, 5, 5, 5, 5, 5]] * 5 + [[10, 11, 11, 11, 11, 11]]


def test_random_shift_draws_its_own_offset_per_sample_and_per_call():
    image = torch.randint(0, 256, (1, 9, 7, 7), dtype=torch.uint8).repeat(64, 1, 1, 1)  # 64 copies of one stack
    torch.manual_seed(3)
    shifted = drq.random_shift(image, pad=4)
    torch.manual_seed(3)
    offsets = torch.randint(0, 9, (64, 2))  # what random_shift drew
    padded = np.pad(image[0].numpy(), ((0, 0), (4, 4), (4, 4)), mode="edge")  # [9, 15, 15], edge values
    for b, (dy, dx) in enumerate(offsets.tolist()):
        assert (shifted[b].numpy() == padded[:, dy : dy + 7, dx : dx + 7]).all(), b  # every channel shifts together
    assert len({tuple(o) for o in offsets.tolist()}) > 20  # per sample, not one shift for the batch
    # the update draws obs' shifts, then next obs': different offsets for the same sample
    torch.manual_seed(0)
    obs_shift, next_obs_shift = drq.random_shift(image, 4), drq.random_shift(image, 4)
    assert (obs_shift != next_obs_shift).flatten(1).any(1).float().mean() > 0.8
    assert torch.equal(drq.random_shift(image, pad=0), image)  # pad 0: no augmentation


# --- the replay buffer's frame stacks ---


class FrameCounter(gym.Env):
    """A stand-in for a DMC task whose rendered frame spells (agent, episode, env step) in its 3 channels.
    Episodes end by truncation after `length` env steps."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, agent: int, length: int):
        self.agent, self.length, self.episode, self.t = agent, length, -1, 0
        self.render_kwargs = {"height": 4, "width": 4}  # what PixelObservation reads of the renderer
        self.observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        self.episode, self.t = self.episode + 1, 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 1.0, False, self.t >= self.length, {}

    def render(self):
        frame = np.empty((4, 4, 3), np.uint8)
        frame[..., 0], frame[..., 1], frame[..., 2] = self.agent, self.episode, self.t
        return frame


@pytest.mark.parametrize("name", ["drq", "ce"])
def test_buffer_rebuilds_exactly_the_stacks_the_environment_returned(name):
    """Two agents, episodes of 3 agent steps (5 env steps, action repeat 2: the last step is cut short), a
    buffer of 7 rounds that wraps twice: after every round, every stored row's obs and next obs must be the
    stacks the environment returned at that step, the first steps of episodes included."""
    module = SCRIPTS[name][0]
    N, rounds = 2, 20
    envs = [PixelObservation(FrameCounter(agent, 5), action_repeat=2, frame_stack=3, time_limit=5) for agent in range(N)]
    assert envs[0].episode_length == 3
    rb = module.PixelReplayBuffer(7, N, envs[0].observation_space.shape, 1, envs[0].episode_length, torch.device("cpu"))
    assert rb.frames.shape[:2] == (N, 7 + 7 // 3 + 1 + 3)
    obs = np.stack([env.reset()[0] for env in envs])
    episode_steps = np.zeros(N, np.int64)
    returned = {}  # row -> (obs, next obs) as the environment returned them
    for r in range(rounds):
        actions, next_obs, dones = np.zeros((N, 1), np.float32), np.empty_like(obs), np.zeros(N, bool)
        for i, env in enumerate(envs):
            next_obs[i], _, _, dones[i], _ = env.step(actions[i])
        extra = (dones,) if name == "ce" else ()
        rb.add(obs, actions, np.ones(N, np.float32), next_obs, np.zeros(N, np.float32), *extra, episode_steps)
        for i in range(N):
            returned[(r % 7) * N + i] = (obs[i].copy(), next_obs[i].copy())
        episode_steps += 1
        obs = next_obs.copy()
        for i in np.flatnonzero(dones):
            obs[i], _ = envs[i].reset()
            episode_steps[i] = 0
        rows = torch.arange(min(r + 1, 7) * N)
        got_obs, got_next = rb.stacks(rows)
        for row in rows.tolist():
            assert (got_obs[row].numpy() == returned[row][0]).all(), f"round {r}, row {row}: obs"
            assert (got_next[row].numpy() == returned[row][1]).all(), f"round {r}, row {row}: next obs"
    assert min(rb.frames_added) > rb.frames.shape[1]  # the frame rings wrapped too
    idx, batch = rb.sample(64)
    assert batch.obs.dtype == torch.uint8 and batch.obs.shape == (64, 9, 4, 4)
    for k, row in enumerate(idx.tolist()):
        assert (batch.obs[k].numpy() == returned[row][0]).all() and (batch.next_obs[k].numpy() == returned[row][1]).all()


def test_buffer_refuses_an_episode_shorter_than_it_was_sized_for():
    rb = drq.PixelReplayBuffer(10, 1, (9, 4, 4), 1, 5, torch.device("cpu"))
    frame = np.zeros((1, 9, 4, 4), np.uint8)
    add = lambda t: rb.add(frame, np.zeros((1, 1)), np.zeros(1), frame, np.zeros(1), np.array([t]))
    for t in range(3):
        add(t)
    with pytest.raises(ValueError, match="sized for episodes of 5"):
        add(0)


def test_buffer_memory_is_one_frame_per_agent_step():
    # the whole 1e6-step run: cartpole (action repeat 8) and walker (2), 64x64, one agent; sizes without memory (meta)
    for action_repeat, gib in ((8, 1.44), (2, 5.73)):
        steps = 1_000_000 // action_repeat
        rb = drq.PixelReplayBuffer(steps, 1, (9, 64, 64), 6, 1000 // action_repeat, torch.device("meta"))
        assert rb.frames.nbytes / 2**30 == pytest.approx(gib, abs=0.01)
        assert rb.frames.nbytes / (steps * 3 * 64 * 64) < 1.01


# --- the scripts ---


@pytest.fixture(scope="module")
def drq_run(tmp_path_factory):
    return run(drq, tmp_path_factory.mktemp("drq"))


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory):
    """CE with every collaboration on (Eq. 5's and the softmax evaluation's random draws included)."""
    return run(ce_drq, tmp_path_factory.mktemp("ce"), col_unroll=True, col_eval=True)


def test_ce_with_one_agent_and_no_collaboration_is_exactly_drq(drq_run, tmp_path):
    c = run(ce_drq, tmp_path, num_agents=1, col_training=False)
    assert c.out["eval_returns"] == drq_run.out["eval_returns"]
    parts = ("actor", "qf", "qf_target", "log_alpha")
    assert same(tensors(c.model, *parts), tensors(drq_run.model, *parts))
    for optimizer in ("q_optimizer", "actor_optimizer"):  # Adam's moments too
        a, b = c.model[optimizer]["state"], drq_run.model[optimizer]["state"]
        assert a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


def test_main_smoke_run_and_same_seed_twice_is_identical(ce_run, drq_run, tmp_path):
    for r, name in ((ce_run, "ce_drq"), (drq_run, "drq")):
        assert r.out["global_step"] == 1200 and math.isfinite(r.out["eval_return"]) and r.out["sps"] > 0
        assert r.run_dir.name.startswith(f"cartpole-swingup__{name}__1__")
    tags = set(scalars(ce_run.run_dir))
    assert {"eval/return", "losses/qf_loss", "losses/actor_loss", "losses/encoder_loss", "charts/intrinsic_reward_mean"} <= tags
    actor = ce_run.model["actor"]
    assert actor["fc1.weight"].shape[0] == 2 and ce_run.model["qf"]["encoder.layers.0.weight"].shape == (2, 81, 32)
    assert "encoder.layers.0.weight" not in actor  # the actor reads the critic's conv layers; they are not its own
    again = run(ce_drq, tmp_path, col_unroll=True, col_eval=True)
    assert again.out["eval_returns"] == ce_run.out["eval_returns"]
    parts = ("actor", "qf", "qf_target", "log_alpha", "encoder")
    assert same(tensors(again.model, *parts), tensors(ce_run.model, *parts))
    assert scalars(again.run_dir) == scalars(ce_run.run_dir)


def test_ablation_flags(ce_run, tmp_path):
    """The flags of ce_sac.py, several at once: multihead shares the torsos, the Q-classifier trains, identity and
    random encoders are never trained, and each changes the training."""
    a = run(ce_drq, tmp_path / "a", multihead=True, eval_mode="qclassifier", encoder="identity", aggregate="max",
            knn_k=3, ego_weight=0.3, intrinsic_coef=0.5, memory_size=20)  # fmt: skip
    qf = a.model["qf"]
    assert qf["encoder.layers.0.weight"].shape[0] == 1 and qf["latent.fc.weight"].shape[0] == 1  # one torso
    assert qf["fc1.weight"].shape[0] == 2 and qf["fc_out.weight"].shape[0] == 4  # twins; N heads
    assert a.model["encoder"] == {} and a.model["q_classifier"] is not None  # identity: pooled pixels, no weights
    assert "losses/qclassifier_loss" in scalars(a.run_dir) and math.isfinite(a.out["eval_return"])
    b = run(ce_drq, tmp_path / "b", encoder="random", unroll_samples=4, col_unroll=True, unroll_eps=1.0)
    assert b.model["encoder"] and b.model["encoder_optimizer"] is None  # a random CNN, fixed: nothing trains it
    assert not same(tensors(b.model, "actor", "qf"), tensors(ce_run.model, "actor", "qf"))
    assert "losses/encoder_loss" not in scalars(b.run_dir)


# --- kill -9 and --resume, through the command line, on a second task ---

# reacher-easy with checkpoints every 7 agent steps (DrQ) or 3.5 rounds (CE): never at the end of an episode (50
# agent steps), so a resume replays part of one; CE with every collaboration on (all its random generators)
RESUME = {"drq": dict(TINY, env_id="reacher-easy", total_timesteps=2000, eval_every=1000, checkpoint_every=140)}
RESUME["ce"] = dict(RESUME["drq"], col_unroll=True, col_eval=True, memory_size=20, memory_skip=2)


def command_line(settings: dict) -> list[str]:
    """The flags that set `settings` (Args fields) on the command line."""
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return flags


@pytest.mark.parametrize("name", ["drq", "ce"])
def test_kill_9_then_resume_from_the_command_line_is_bit_for_bit(name, tmp_path):
    """The same run uninterrupted (through main()) and killed with SIGKILL after its first checkpoint, then resumed
    with `--resume` alone (and `--save-model`, which a resume may add): the same last line, the same scalars."""
    module, script = SCRIPTS[name]
    whole = run(module, tmp_path / "whole", **RESUME[name])
    flags = command_line(RESUME[name])
    (tmp_path / "killed").mkdir()
    process = subprocess.Popen([sys.executable, str(script), *flags], cwd=tmp_path / "killed", env=SUBPROCESS_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 240
    while not list((tmp_path / "killed").glob("runs/*/checkpoint.pt")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(name).uniform(0.5, 2.0))
    process.kill()
    process.wait()
    (run_dir,) = (tmp_path / "killed").glob("runs/*")
    assert not (run_dir / "result.json").exists(), "the run finished before it was killed: raise its budget"
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert 0 < state["loop"]["global_step"] < 2000 and len(state["loop"]["episode_actions"][0]) > 0  # mid-episode
    resumed = run_cli(script, tmp_path / "killed", *flags, "--resume", "--save-model")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.strip().splitlines()[-1] == f"eval_return={whole.out['eval_return']}"
    assert scalars(run_dir) == scalars(whole.run_dir)
    model = torch.load(run_dir / f"{module.Args().exp_name}.pt", weights_only=True)  # --save-model: tensors only
    assert same(tensors(model, "actor", "qf", "log_alpha"), tensors(whole.model, "actor", "qf", "log_alpha"))
    assert model["qf"]["encoder.layers.3.weight"].shape[-1] == 256  # conv 32-64-128-256


# --- bad input: one line naming what is valid, exit 2 ---

BAD = [
    ("both", ["--env-id", "cartpole-balance_hard"], ["--env-id cartpole-balance_hard", "DMC", "cheetah-run", "dmc_ids"]),
    ("both", ["--env-id", "Hopper-v5"], ["--env-id Hopper-v5", "DMC `domain-task`"]),
    ("both", ["--image-size", "16"], ["--image-size 16", "too small", ">= 31"]),
    ("both", ["--action-repeat", "0"], ["--action-repeat 0", ">= 1"]),
    ("both", ["--learning-starts", "1200"], ["--learning-starts 1200", "no learning step", "< --total-timesteps 1200"]),
    ("both", ["--total-timesteps", "10000", "--learning-starts", "-1"], ["--learning-starts -1", ">= 0"]),
    ("drq", [], ["--learning-starts not given: 20000 (1000 agent steps)", "--total-timesteps 1200"]),  # default warm-up
    ("ce", [], ["--learning-starts not given: 40000 (1000 agent steps)", "--total-timesteps 1200"]),
    ("ce", ["--num-agents", "0"], ["--num-agents 0", ">= 1"]),
    ("ce", ["--col-eval", "--eval-mode", "qclassifier"], ["--col-eval", "--eval-mode"]),
]
CASES = [(name, flags, must) for scope, flags, must in BAD for name in (["drq", "ce"] if scope == "both" else [scope])]


@pytest.mark.parametrize("name, flags, must_name", CASES, ids=[f"{n} {' '.join(f)}" for n, f, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(name, flags, must_name, monkeypatch, capsys, tmp_path):
    module, _ = SCRIPTS[name]
    monkeypatch.chdir(tmp_path)
    base = TINY_CLI if flags else [f for f in TINY_CLI if f not in ("--learning-starts", "400")]  # []: the default warm-up
    monkeypatch.setattr(sys, "argv", [module.__file__, *base, *flags])
    sigint = signal.getsignal(signal.SIGINT)
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exit_info:
            module.cli(module.main, module.Args)
    finally:
        signal.signal(signal.SIGINT, sigint)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(text in lines[0] for text in must_name), lines[0]
    assert not (tmp_path / "runs").exists()


def test_bad_input_exits_2_from_a_real_process(tmp_path):
    result = run_cli(SCRIPTS["ce"][1], tmp_path, *TINY_CLI, "--env-id", "nope-nope")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --env-id nope-nope: unknown DMC task")
