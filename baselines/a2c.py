"""A2C: synchronous advantage actor-critic with a Gaussian policy and vectorized environments.

The "A2C" column of Table 1 in "Collaborative Exploration" (CE; section 5.1, Appendix C.1): Mnih et al.,
"Asynchronous Methods for Deep Reinforcement Learning" (ICML 2016), the advantage actor-critic of
Algorithm S3 in its synchronous form (A2C, as OpenAI baselines and Stable-Baselines3 run it): E
environments step in lockstep for t_max steps, then one update of a shared actor-critic on the E * t_max
transitions, which are then discarded. The CE paper runs it for 1e7 env steps (C.1: on-policy, "the
collected samples are discarded once used"), against 1e6 for the off-policy baselines.
- policy: a Gaussian with a state-dependent mean and a learned, state-independent log std; the env gets
  the sample clipped to the action box [-1, 1] (envs/dmc.py rescales every task's box to it);
- returns: n-step bootstrapped returns (A3C), written as GAE with lambda = 1 (`gae_advantages`); a
  time-limit truncation bootstraps from the value of the final observation, a termination does not;
- loss: -A * log pi(a|s) + c_v (R - V(s))^2 - c_H H[pi(.|s)], RMSProp, gradient-norm clip.

Run:     python baselines/a2c.py --env-id cheetah-run                 # 1e7 env steps
Expect:  the CE paper reports 271.4 on cheetah-run (Table 1; SAC 847.3 after 1e6); the last printed
         line is `eval_return=<mean of the last 10 evaluations>`.
Quick check (about 25 CPU seconds): python baselines/a2c.py --env-id InvertedPendulum-v5 --total-timesteps 250000
         --eval-every 25000 --eval-episodes 5: evaluations rise from 57-76 (the pole falls) to the maximum 1000
         (balanced for the whole episode) by step 200k-225k (seeds 1-3).

Decisions where the papers are silent (Mnih et al.'s MuJoCo runs used an LSTM and asynchronous threads;
the CE paper gives no A2C settings):
- Common practice for A2C on MuJoCo-like tasks (Stable-Baselines3's A2C defaults, OpenAI baselines):
  separate actor and critic MLPs 64-64 with tanh, orthogonal initialisation (gain sqrt(2), 0.01 for the
  policy's mean, 1 for the value), log std initialised at 0, lr 7e-4, RMSProp (decay 0.99 as Mnih et al.,
  eps 1e-5), value coefficient 0.5, gradient-norm clip 0.5, no advantage normalisation, no observation or
  reward normalisation. From Mnih et al.: 16 parallel environments (their 16 actor-learner threads),
  t_max = 5, gamma 0.99, entropy cost 1e-4 (their continuous-control value).
- Evaluation every 50 000 env steps (200 evaluations over 1e7 steps, as the SAC scripts' 200 over 1e6),
  10 fresh episodes with the mean action; the score is the mean of the last 10 evaluations (CE D.1).

Seeding: `--seed` seeds python, numpy, torch and the environments' resets (env i: seed + i); on CPU two
runs with the same seed are identical. What stays nondeterministic: CUDA kernels that use atomics (e.g.
some backward passes), even with `--torch-deterministic`.
"""

import glob
import json
import math
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `python baselines/a2c.py` finds envs/
from envs.dmc import make_env  # noqa: E402

SCRIPT = "baselines/a2c.py"  # in checkpoints: a checkpoint resumes only in the script that wrote it


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run directory's name)"""
    seed: int = 1
    """seed of python, numpy, torch and the environments"""
    torch_deterministic: bool = True
    """sets `torch.backends.cudnn.deterministic`"""
    cuda: bool = True
    """train on the GPU when there is one"""
    torch_threads: int = 1
    """CPU threads of torch; 1 is fastest for these small networks (measured 2-cores: more threads spin-wait) and keeps runs identical across machines"""
    save_model: bool = False
    """save the actor-critic to `runs/{run_name}/{exp_name}.pt` at the end"""
    checkpoint_every: int = 0
    """env steps between checkpoints of the whole training state, `runs/{run_name}/checkpoint.pt` (0: none)"""
    resume: Optional[str] = None
    """continue an interrupted run bit for bit: `--resume` alone the newest one of this command under runs/, or a run folder or checkpoint"""

    env_id: str = "cheetah-run"
    """DMC task as `domain-task` (Table 1: the DMC15) or a gymnasium id with continuous actions"""
    total_timesteps: int = 10_000_000
    """environment steps of all environments together (CE C.1: 1e7 for A2C)"""
    num_envs: int = 16
    """E, environments stepped in lockstep (Mnih et al. 2016: 16 actor-learner threads)"""
    num_steps: int = 5
    """t_max, steps of every environment per update (Mnih et al. 2016)"""
    gamma: float = 0.99
    """discount factor (Mnih et al. 2016)"""
    gae_lambda: float = 1.0
    """lambda of GAE; 1 gives A3C's n-step bootstrapped returns (Mnih et al. 2016, Algorithm S3)"""
    learning_rate: float = 7e-4
    """RMSProp learning rate (OpenAI baselines' and Stable-Baselines3's A2C)"""
    rmsprop_alpha: float = 0.99
    """RMSProp decay (Mnih et al. 2016)"""
    rmsprop_eps: float = 1e-5
    """RMSProp epsilon (OpenAI baselines' and Stable-Baselines3's A2C)"""
    ent_coef: float = 1e-4
    """c_H, entropy cost (Mnih et al. 2016, continuous control)"""
    vf_coef: float = 0.5
    """c_v, value loss coefficient (OpenAI baselines' and Stable-Baselines3's A2C)"""
    max_grad_norm: float = 0.5
    """gradient-norm clip of the actor-critic (OpenAI baselines' and Stable-Baselines3's A2C)"""
    hidden_size: int = 64
    """width of the actor's and the critic's two tanh layers (Stable-Baselines3's A2C)"""
    eval_every: int = 50_000
    """environment steps between evaluations (paper silent: 200 evaluations over 1e7 steps)"""
    eval_episodes: int = 10
    """episodes per evaluation, run in lockstep with the mean action"""
    log_every: int = 10_000
    """environment steps between loss logs (each log is a host-device sync)"""


def layer(in_features: int, out_features: int, gain: float = math.sqrt(2)) -> nn.Linear:
    """A linear layer with orthogonal weights of the given gain and zero bias (OpenAI baselines' initialisation)."""
    linear = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(linear.weight, gain)
    nn.init.zeros_(linear.bias)
    return linear


class ActorCritic(nn.Module):
    """V(s) and a Gaussian pi(a|s) = N(mean(s), exp(log_std)^2): separate MLPs width-width with tanh."""

    def __init__(self, obs_dim: int, act_dim: int, width: int):
        super().__init__()
        self.critic = nn.Sequential(layer(obs_dim, width), nn.Tanh(), layer(width, width), nn.Tanh(), layer(width, 1, 1.0))
        self.actor_mean = nn.Sequential(layer(obs_dim, width), nn.Tanh(), layer(width, width), nn.Tanh(), layer(width, act_dim, 0.01))
        self.actor_log_std = nn.Parameter(torch.zeros(act_dim))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [..., O] -> V [...]."""
        return self.critic(obs)[..., 0]

    def policy(self, obs: torch.Tensor) -> torch.distributions.Normal:
        """obs [..., O] -> a Normal over actions [..., A] (log-densities and entropies sum over A)."""
        mean = self.actor_mean(obs)
        return torch.distributions.Normal(mean, self.actor_log_std.exp().expand_as(mean))


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminations: torch.Tensor,
                   dones: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns of a rollout, all [T, E] -> ([T, E], [T, E]) (GAE, Schulman et al. 2016, Eq. 16).

    delta_t = r_t + gamma (1 - term_t) V(s_{t+1}) - V(s_t),   A_t = delta_t + gamma lam (1 - done_t) A_{t+1},
    R_t = A_t + V(s_t), with A_T = 0 after the last step. V(s_{t+1}) = next_values[t] is the value of the state
    the step reached: at an episode's end the final observation's, before the reset. So a time-limit
    truncation (done, not terminated) bootstraps from it and a termination does not, and no return crosses
    into the next episode. With lam = 1, R_t is A3C's n-step return: the rewards up to the rollout's or the
    episode's end, plus the discounted value there (Mnih et al. 2016, Algorithm S3).
    """
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[0])  # [E]
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * (1 - terminations[t]) * next_values[t] - values[t]  # [E]
        next_advantage = delta + gamma * lam * (1 - dones[t]) * next_advantage
        advantages[t] = next_advantage
    return advantages, advantages + values


# --- shared: cli ---
# What every script promises on the command line (README, "Exit codes"): bad input is one line on
# stderr and exit 2 (as tyro's own parse errors), a NaN or infinity in training one line and exit 3,
# Ctrl-C one line and exit 130; a traceback means a bug.
EXIT_BAD_INPUT, EXIT_NON_FINITE, EXIT_INTERRUPTED = 2, 3, 130


class BadInput(ValueError):
    """An impossible setting or an unusable file, as one line: `--flag VALUE: what is valid`."""


class NonFinite(RuntimeError):
    """A NaN or an infinity in training (a loss, a Q-value, an action), named with its step."""


class Interrupted(RuntimeError):
    """Ctrl-C: the run stopped between two steps."""


def check_range(args, names, low=-math.inf, high=math.inf, *, low_open=False, high_open=False, kind="number"):
    """BadInput unless every field of `args` in `names` is a finite number in the interval (ends
    included unless open); `kind="integer"` also refuses a non-integer."""
    for name in names:
        value = getattr(args, name)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below and (kind != "integer" or float(value).is_integer())):
            bounds = [f"{op} {int(end) if float(end).is_integer() else end}" for op, end, used in (
                (">" if low_open else ">=", low, low > -math.inf), ("<" if high_open else "<=", high, high < math.inf)) if used]
            valid = f"must be {'an integer' if kind == 'integer' else 'a finite number'} {' and '.join(bounds)}".rstrip()
            raise BadInput(f"--{name.replace('_', '-')} {value}: {valid}")


def save_file(obj, path: str) -> None:
    """torch.save, atomically: a file interrupted while being written never replaces a good one."""
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_file(path: str, flag: str, what: str):
    """torch.load of a file a user names, with weights_only=True (tensors and plain containers,
    never code); BadInput if it is missing, empty, truncated, corrupt or not a torch file."""
    if not os.path.isfile(path):
        raise BadInput(f"{flag} {path}: no such file; expected {what}")
    try:
        with warnings.catch_warnings():  # torch warns about a raw pickle's protocol before refusing it: one line is ours
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, EOFError, RuntimeError (zip), ...: all the same to the user
        raise BadInput(f"{flag} {path}: not a readable torch file ({type(error).__name__}); expected {what}") from None


class Progress:
    """Phase, steps, steps per second, time left and the last evaluation: a tqdm bar when stdout is
    a terminal, a plain line every `every` seconds otherwise (log files, pipes, clusters)."""

    def __init__(self, every: float = 30.0):
        self.every, self.bar, self.last_eval = every, None, "-"
        self.interactive = sys.stdout.isatty()

    def phase(self, name: str, total: int, start: int = 0) -> None:
        """Begin a phase counting steps from `start` to `total` (the rate is measured within it)."""
        self.close()
        self.name, self.total, self.step, self.last_eval = name, total, start, "-"
        self.last_step, self.last_time, self.sps = start, time.time(), 0.0
        if self.interactive:
            self.bar = tqdm(total=total, initial=start, desc=name, unit="step", dynamic_ncols=True, file=sys.stdout)

    def update(self, step: int, eval_return: float | None = None) -> None:
        if eval_return is not None:
            self.last_eval = f"{eval_return:.4g}"
        if self.bar is not None:
            self.bar.update(step - self.step)
            self.bar.set_postfix_str(f"eval_return={self.last_eval}", refresh=False)
        elif time.time() - self.last_time >= self.every or eval_return is not None:
            now = time.time()
            if now - self.last_time >= 1.0:  # the rate over the last line's interval (not over an instant)
                self.sps = (step - self.last_step) / (now - self.last_time)
                self.last_step, self.last_time = step, now
            left = (self.total - step) / self.sps if self.sps > 0 else math.inf
            eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 * 365 else "?"
            print(f"{self.name}: step {step}/{self.total} ({100 * step / self.total:.0f}%), {self.sps:.1f} steps/s, "
                  f"{eta} left, eval_return {self.last_eval}", flush=True)
        self.step = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


STOP_REQUESTED = [False]  # set by the first Ctrl-C under `cli`; the training loop stops at its next step


def cli(main, args_type) -> None:
    """`main(tyro.cli(args_type))` with the exit codes above: bad input, a non-finite value and
    Ctrl-C end in one line on stderr, never a traceback. The first Ctrl-C asks the loop to stop
    at its next step (it checkpoints when checkpointing is on); a second stops at once."""

    def request_stop(signum, frame):
        STOP_REQUESTED[0] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: KeyboardInterrupt at once

    argv = sys.argv[1:]
    if "--resume" in argv[-1:] or any(a == "--resume" and b.startswith("--") for a, b in zip(argv, argv[1:])):
        argv.insert(argv.index("--resume") + 1, "latest")  # `--resume` alone: the newest interrupted run of this command
    args = tyro.cli(args_type, args=argv)
    signal.signal(signal.SIGINT, request_stop)
    try:
        main(args)
        return
    except BadInput as error:
        message, code = f"error: {error}", EXIT_BAD_INPUT
    except NonFinite as error:
        message, code = f"error: {error}", EXIT_NON_FINITE
    except (Interrupted, KeyboardInterrupt) as error:
        message, code = f"interrupted: {error or 'stopped at once (second Ctrl-C)'}", EXIT_INTERRUPTED
    print(message, file=sys.stderr)
    sys.exit(code)
# --- end shared ---


# --- shared: checkpoint ---
# Exact resume (--checkpoint-every, --resume): a checkpoint holds every tensor, counter and random generator that
# decides what happens next. Environments are not pickled (loading a file must never run code): each one is
# rebuilt from the state of its generator just before its last reset, and the actions of its episode so far.
NOT_COMPARED_ON_RESUME = ("resume", "checkpoint_every", "torch_threads", "cuda", "save_model")  # may change between tries


def rng_state(rng) -> dict:
    """The state of a numpy RandomState (dm_control's) or Generator (gymnasium's) as plain values and tensors."""
    if isinstance(rng, np.random.RandomState):
        state = rng.get_state(legacy=False)
        return {**state, "state": {"key": torch.from_numpy(state["state"]["key"].astype(np.int64)), "pos": state["state"]["pos"]}}
    return rng.bit_generator.state


def set_rng_state(rng, state: dict) -> None:
    if isinstance(rng, np.random.RandomState):
        rng.set_state({**state, "state": {"key": state["state"]["key"].numpy().astype(np.uint32), "pos": state["state"]["pos"]}})
    else:
        rng.bit_generator.state = state


def global_rng_states() -> dict:
    """Python's, numpy's and torch's global generators (CPU and every GPU)."""
    return {"python": random.getstate(), "numpy": rng_state(np.random.mtrand._rand), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_global_rng_states(state: dict) -> None:
    random.setstate(state["python"])
    set_rng_state(np.random.mtrand._rand, state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def replay_episode(env, reset: dict, actions: list) -> np.ndarray:
    """Rebuild an environment mid-episode: reset it as its episode began (`reset` holds the reset's seed, or the
    state of its generator just before an unseeded reset), take the episode's actions again, return the observation.
    MuJoCo and gymnasium's classic-control tasks are deterministic given these."""
    if "seed" in reset:
        obs, _ = env.reset(seed=reset["seed"])
    else:
        set_rng_state(env.unwrapped.np_random, reset["rng"])
        obs, _ = env.reset()
    for action in actions:
        obs = env.step(action)[0]
    return obs


def settings_of(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in NOT_COMPARED_ON_RESUME}


def find_checkpoint(args, script: str) -> str:
    """The checkpoint that `--resume` names: a file, a run folder, or (`--resume` alone) the newest unfinished
    run of this command (same script, env, seed and settings) under runs/. BadInput if there is none."""
    if args.resume != "latest":
        path = os.path.join(args.resume, "checkpoint.pt") if os.path.isdir(args.resume) else args.resume
        if not os.path.isfile(path):
            raise BadInput(f"--resume {args.resume}: no checkpoint there; expected a run folder or its checkpoint.pt")
        return path
    candidates = []
    for folder in glob.glob(f"runs/{args.env_id}__{args.exp_name}__{args.seed}__*"):
        try:
            with open(os.path.join(folder, "settings.json")) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            continue
        if (saved.get("script") == script and saved.get("settings") == settings_of(args)
                and os.path.isfile(os.path.join(folder, "checkpoint.pt"))
                and not os.path.exists(os.path.join(folder, "result.json"))):
            candidates.append(os.path.join(folder, "checkpoint.pt"))
    if not candidates:
        raise BadInput(f"--resume: no interrupted run of this command under runs/{args.env_id}__{args.exp_name}__"
                       f"{args.seed}__*/ (same settings, a checkpoint.pt, no result.json); start it without --resume")
    return max(candidates, key=os.path.getmtime)


def load_checkpoint(args, script: str) -> dict:
    """The checkpoint `--resume` names, checked to be this script's, resumable, and of the same settings."""
    path = find_checkpoint(args, script)
    state = load_file(path, "--resume", f"a checkpoint.pt written by {script}")
    if not isinstance(state, dict) or state.get("script") != script or "settings" not in state:
        raise BadInput(f"--resume {path}: not a checkpoint of {script}")
    if not state.get("resumable", False):
        raise BadInput(f"--resume {path}: written when a non-finite value stopped the run; it is for inspection only")
    changed = sorted(k for k in state["settings"].keys() | settings_of(args).keys()
                     if state["settings"].get(k) != settings_of(args).get(k))
    if changed:
        was = " ".join(f"--{k.replace('_', '-')} {state['settings'].get(k)}" for k in changed)
        raise BadInput(f"--resume {path}: the run was started with {was}; resume it with the same settings")
    return state


def write_json(obj: dict, path: str) -> None:
    """json.dump, atomically."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)
# --- end shared ---


def validate(args: Args) -> None:
    """BadInput (one line) for the first impossible setting, or one that would make the run meaningless."""
    check_range(args, ("seed",), 0, 2**31 - 1, kind="integer")
    check_range(args, ("torch_threads", "total_timesteps", "num_envs", "num_steps", "hidden_size", "eval_every",
                       "eval_episodes", "log_every"), 1, kind="integer")  # fmt: skip
    check_range(args, ("checkpoint_every",), 0, kind="integer")
    if args.total_timesteps < args.num_envs * args.num_steps:  # the run would end untrained and report that as its score
        raise BadInput(f"--total-timesteps {args.total_timesteps}: less than one update; must be >= --num-envs * --num-steps = {args.num_envs * args.num_steps}")
    check_range(args, ("gamma", "gae_lambda", "rmsprop_alpha"), 0, 1)
    check_range(args, ("learning_rate", "rmsprop_eps", "max_grad_norm"), 0, low_open=True)
    check_range(args, ("ent_coef", "vf_coef"), 0)
    try:
        make_env(args.env_id, args.seed).close()
    except ValueError as error:  # the valid ids are in the message
        raise BadInput(f"--env-id {args.env_id}: {error}") from None


def main(args: Args) -> dict:
    validate(args)
    torch.set_num_threads(args.torch_threads)  # before any torch work (see --torch-threads)
    E, T = args.num_envs, args.num_steps
    resume = load_checkpoint(args, SCRIPT) if args.resume else None  # BadInput for a missing or mismatched one
    run_name = resume["run_name"] if resume else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    # a resumed run drops what the interrupted one logged after its checkpoint, and logs it again
    writer = SummaryWriter(f"runs/{run_name}", purge_step=resume["loop"]["global_step"] + 1 if resume else None)
    write_json({"script": SCRIPT, "settings": settings_of(args)}, f"runs/{run_name}/settings.json")
    writer.add_text(
        "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
    )

    # SEEDING
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # ENVIRONMENTS: env i is seeded with seed + i
    envs = [make_env(args.env_id, args.seed + i) for i in range(E)]
    eval_envs = [make_env(args.env_id, args.seed + 10_000 + j) for j in range(args.eval_episodes)]
    obs_dim, act_dim = envs[0].observation_space.shape[0], envs[0].action_space.shape[0]

    agent = ActorCritic(obs_dim, act_dim, args.hidden_size).to(device)
    optimizer = torch.optim.RMSprop(agent.parameters(), lr=args.learning_rate, alpha=args.rmsprop_alpha, eps=args.rmsprop_eps)

    episode_resets = [{"seed": args.seed + i} for i in range(E)]  # how each env's episode began, and its actions
    obs = np.stack([env.reset(seed=args.seed + i)[0] for i, env in enumerate(envs)])  # [E, O]
    episode_actions: list[list[np.ndarray]] = [[] for _ in range(E)]  # since: what a resumed run replays
    episode_returns = np.zeros(E)
    eval_returns: list[float] = []
    global_step, next_eval, next_log, next_checkpoint = 0, args.eval_every, args.log_every, args.checkpoint_every
    checkpoint_path = f"runs/{run_name}/checkpoint.pt"

    def model_state() -> dict:
        """The actor-critic and its optimizer: `--save-model`."""
        return {"global_step": global_step, "agent": agent.state_dict(), "optimizer": optimizer.state_dict()}

    def training_state(resumable: bool = True) -> dict:
        """Everything that decides the rest of the run: a checkpoint for --resume (or, at a non-finite stop, for inspection)."""
        return {"script": SCRIPT, "settings": settings_of(args), "run_name": run_name, "resumable": resumable,
                **model_state(), "rng": global_rng_states(),
                "eval_envs": [rng_state(env.unwrapped.np_random) for env in eval_envs],
                "loop": {"global_step": global_step, "next_eval": next_eval, "next_log": next_log,
                         "next_checkpoint": next_checkpoint, "eval_returns": eval_returns,
                         "episode_returns": torch.from_numpy(episode_returns), "obs": torch.from_numpy(obs),
                         "episode_resets": episode_resets,
                         "episode_actions": [torch.from_numpy(np.asarray(a, np.float32).reshape(-1, act_dim)) for a in episode_actions]}}

    def stop(error: Exception):
        """End the run between two updates (Ctrl-C, or a non-finite value): a checkpoint, the logs closed."""
        save_file(training_state(resumable=isinstance(error, Interrupted)), checkpoint_path)
        progress.close()
        writer.close()
        raise type(error)(f"{error}; checkpoint in {checkpoint_path}")

    if resume:  # RESUME: everything built above is overwritten with the checkpoint's state
        agent.load_state_dict(resume["agent"])
        optimizer.load_state_dict(resume["optimizer"])
        set_global_rng_states(resume["rng"])
        for env, saved in zip(eval_envs, resume["eval_envs"]):
            set_rng_state(env.unwrapped.np_random, saved)
        loop = resume["loop"]
        global_step, next_eval, next_log, next_checkpoint = (loop[k] for k in ("global_step", "next_eval", "next_log", "next_checkpoint"))
        eval_returns, episode_returns, episode_resets = loop["eval_returns"], loop["episode_returns"].numpy(), loop["episode_resets"]
        episode_actions = [list(a.numpy()) for a in loop["episode_actions"]]
        obs = np.stack([replay_episode(env, reset, a) for env, reset, a in zip(envs, episode_resets, episode_actions)])
        if not np.array_equal(obs, loop["obs"].numpy()):
            raise BadInput(f"--resume {args.resume}: the environments did not replay to their saved state (nondeterministic env?)")
    start_time, start_step = time.time(), global_step
    progress = Progress()
    progress.phase("learning", args.total_timesteps, global_step)

    # a run ends after its last whole update: total_timesteps rounded down to a multiple of E * T
    while global_step + E * T <= args.total_timesteps:
        if STOP_REQUESTED[0]:
            stop(Interrupted(f"at step {global_step}"))
        # COLLECT: T steps of every environment with the current policy
        rollout_obs, rollout_actions = np.zeros((T, E, obs_dim), np.float32), np.zeros((T, E, act_dim), np.float32)
        rollout_next_obs = np.zeros((T, E, obs_dim), np.float32)  # the state each step reached (before a reset)
        rewards, terminations, dones = np.zeros((T, E), np.float32), np.zeros((T, E), np.float32), np.zeros((T, E), np.float32)
        for t in range(T):
            with torch.no_grad():
                actions = agent.policy(torch.as_tensor(obs, device=device)).sample().cpu().numpy()  # [E, A], unclipped
            if not np.isfinite(actions).all():  # a NaN reaching the physics engine would crash it, far from the cause
                stop(NonFinite(f"actions of envs {np.flatnonzero(~np.isfinite(actions).all(1)).tolist()} not finite at step {global_step}"))
            rollout_obs[t], rollout_actions[t] = obs, actions
            env_actions = np.clip(actions, -1.0, 1.0)  # the box of every env (envs/dmc.py); the update uses the sample
            for i, env in enumerate(envs):
                rollout_next_obs[t, i], rewards[t, i], terminated, truncated, _ = env.step(env_actions[i])
                terminations[t, i], dones[t, i] = terminated, terminated or truncated
                episode_actions[i].append(env_actions[i])
            episode_returns += rewards[t]
            global_step += E
            obs = rollout_next_obs[t].copy()
            for i in np.flatnonzero(dones[t]):
                writer.add_scalar("charts/episodic_return", episode_returns[i], global_step)
                episode_resets[i], episode_actions[i] = {"rng": rng_state(envs[i].unwrapped.np_random)}, []
                obs[i], _ = envs[i].reset()
                episode_returns[i] = 0.0

        # RETURNS: n-step (GAE) targets; values of the reached states without gradient
        b_obs, b_actions = torch.as_tensor(rollout_obs, device=device), torch.as_tensor(rollout_actions, device=device)  # [T, E, O], [T, E, A]
        b_rewards, b_terminations, b_dones = (torch.as_tensor(x, device=device) for x in (rewards, terminations, dones))  # [T, E]
        values = agent.value(b_obs)  # [T, E], with gradient: the critic's loss
        with torch.no_grad():
            next_values = agent.value(torch.as_tensor(rollout_next_obs, device=device))  # [T, E]
            advantages, returns = gae_advantages(b_rewards, values.detach(), next_values, b_terminations, b_dones, args.gamma, args.gae_lambda)

        # UPDATE: policy gradient with the advantage as baseline-corrected return, value regression, entropy bonus
        dist = agent.policy(b_obs)
        log_prob, entropy = dist.log_prob(b_actions).sum(-1), dist.entropy().sum(-1)  # [T, E]
        policy_loss = -(advantages * log_prob).mean()
        value_loss = (returns - values).square().mean()
        entropy_mean = entropy.mean()
        loss = policy_loss + args.vf_coef * value_loss - args.ent_coef * entropy_mean
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
        optimizer.step()

        # EVAL: fresh episodes on separate envs, the mean action (clipped to the box), all episodes in lockstep
        if global_step >= next_eval or global_step + E * T > args.total_timesteps:
            next_eval += args.eval_every * ((global_step - next_eval) // args.eval_every + 1)
            eval_obs = np.stack([env.reset()[0] for env in eval_envs])  # [E_eval, O]
            episode_totals, running = np.zeros(len(eval_envs)), np.ones(len(eval_envs), bool)
            while running.any():
                with torch.no_grad():
                    eval_actions = agent.actor_mean(torch.as_tensor(eval_obs, device=device)).clamp(-1, 1).cpu().numpy()  # [E_eval, A]
                for j in np.flatnonzero(running):
                    eval_obs[j], r, terminated, truncated, _ = eval_envs[j].step(eval_actions[j])
                    episode_totals[j] += r
                    running[j] = not (terminated or truncated)
            eval_returns.append(float(episode_totals.mean()))
            writer.add_scalar("eval/return", eval_returns[-1], global_step)
            progress.update(global_step, eval_returns[-1])

        # LOG: losses of the last update (the .item() calls sync with the device, hence only every log_every steps)
        sps = (global_step - start_step) / max(time.time() - start_time, 1e-9)
        if global_step >= next_log:
            next_log += args.log_every * ((global_step - next_log) // args.log_every + 1)
            writer.add_scalar("charts/SPS", sps, global_step)
            logged = {"losses/policy_loss": policy_loss, "losses/value_loss": value_loss, "losses/entropy": entropy_mean,
                      "losses/values": values.mean(), "charts/action_std": agent.actor_log_std.exp().mean()}
            logged = {tag: value.item() for tag, value in logged.items()}  # host-device syncs, once per log
            if not all(map(math.isfinite, logged.values())):
                stop(NonFinite(f"{', '.join(t for t, v in logged.items() if not math.isfinite(v))} not finite at step {global_step}"))
            for tag, value in logged.items():
                writer.add_scalar(tag, value, global_step)
        progress.update(global_step)

        # CHECKPOINT: atomically (a kill -9 while writing leaves the previous checkpoint whole)
        if args.checkpoint_every and global_step >= next_checkpoint:
            next_checkpoint += args.checkpoint_every * ((global_step - next_checkpoint) // args.checkpoint_every + 1)
            save_file(training_state(), checkpoint_path)

    progress.close()
    if args.save_model:
        path = f"runs/{run_name}/{args.exp_name}.pt"
        save_file(model_state(), path)
        print(f"model saved to {path}")
    for env in envs + eval_envs:
        env.close()
    writer.close()

    eval_return = float(np.mean(eval_returns[-10:]))  # CE Appendix D.1: mean of the last 10 evaluations
    result = {"eval_return": eval_return, "eval_returns": eval_returns, "global_step": global_step, "run_name": run_name}
    write_json(result, f"runs/{run_name}/result.json")  # the run is finished: --resume no longer picks it
    print(f"eval_return={eval_return}")
    return {**result, "sps": sps}


if __name__ == "__main__":
    cli(main, Args)
