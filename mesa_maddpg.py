"""MESA: meta-trained exploration policies that cover the high-reward joint state-action subspace.

Paper: Zhang, Liang, Wu, Fang, "MESA: Cooperative Meta-Exploration in Multi-Agent Learning
through Exploiting State-Action Space Structure", AAMAS 2024; section 5 (Algorithms 1 and 2,
Eq. 5 and 6), Appendix B.2 Table 1 (hyperparameters), Appendix B.4 Table 2 ("MESA").
The learner f is the MADDPG of `baselines/maddpg.py`, copied here in marked blocks
(`# --- shared: NAME ---`), so `diff baselines/maddpg.py mesa_maddpg.py` shows MESA only.

The method, in the order main() runs it:
1. META-TRAINING (Algorithm 1). For each of the B training tasks, train a fresh MADDPG (Table 1's
   collection steps per task: its random warm-up, then training) and keep
   every joint state-action pair (s_t, a_t) whose reward reaches R* in the dataset M*; earlier
   zero-reward pairs of the same trajectory that lead to such a pair join M* too, with the
   densified reward of Eq. 5 (`relabel_rewards`). A KMeans over M* (`kmeans`, C clusters) is
   the hash phi of the pseudo-counts (section 5.3).
2. E exploration policies are trained one after another, each a fresh MADDPG on the training
   tasks, rewarded by Eq. 6 (`exploration_reward`) instead of the task reward: r~_t = r_hat_t
   f_d(N(phi(s_t, a_t))) if the nearest element of M* is closer than eps, else 0, f_d(x) = 1/x^5,
   r_hat_t the step's own Eq. 5 reward on the training task it plays (`densified_rewards`).
   N starts every trajectory at the global count N_hat and counts the visits of the
   trajectory (`trajectory_pseudo_counts`); after a policy is trained, N_hat adds the visits of
   every trajectory it played (its dataset D, `updated_global_counts`), so the next policy is paid
   only for what is still uncovered.
   The E actors are saved (`exploration_policies.pt` in the run directory).
3. META-TESTING (Algorithm 2). On each unseen test task a fresh MADDPG learns; every episode is
   played, with probability eps(t) annealed from 1 to 0 (`exploration_probability`), by one
   uniformly chosen exploration policy instead of the learner, and goes into the replay buffer.
   `--exploration-policies PATH` skips step 1-2 and loads saved policies: meta-train once,
   meta-test many times.

Run:
    python mesa_maddpg.py --env-id climb-multi-stage --seed 1
Expected: the paper (Table 2) reports 0.81 on the multi-stage climb game (return averaged over
the 5 steps) where MADDPG stays at 0.50. With the earlier readings (`--collect-steps 30000 --eq6-r-hat
nearest --global-count-from last-batch`; README table, 5 seeds x 5 test tasks) ours is 0.78 for MESA
and MADDPG alike, exactly what solving every k = 1 stage and no k = 2 stage gives: our MADDPG already
solves the k = 1 stages, a k = 2 stage's optimum (u, u) is in M* only when some training task has (2, u)
at the same stage, the exploration policies rarely play it (the k = 1 optima (u, x) far outnumber the
diagonal ones), and a covered optimum that is played is not adopted either (the observation carries
the whole joint-action history). With the paper's readings (the defaults) Eq. 6 pays a policy only
where its joint action is valuable on the training task drawn, so the first policy learns a k = 1
optimum shared by several tasks, and N_hat, fed by all of its dataset D (random warm-up included),
covers every cluster of M*: the later policies earn an Eq. 6 return near 0 (README, measured).
The defaults give 0.77 on the multi-stage and 0.74 on the one-step game (5 x 5, README): the
same as MADDPG within one stage of one test task in 25.
The last line printed is
`test_return=<float>`, the mean over the test tasks.
Long runs: `--checkpoint-every N` saves the whole training state every N env steps (all phases
together) to runs/{run}/checkpoint.pt (and Ctrl-C saves it on the way out); the same command with
`--resume` continues the newest interrupted run in its own folder, bit for bit on CPU.

Nondeterminism: on CPU the same seed gives identical runs (`--torch-deterministic`); on GPU,
cuBLAS reductions may differ in the last bits between runs.

Readings of the paper (each with the earlier reading as an option, measured in the README):
- Table 1's collection steps are per training task (as its meta-testing steps are per test task):
  Algorithm 1 line 4 trains f on each task, which 30k in all (3000 per task, all random warm-up)
  never did; `--collect-steps 30000` is the earlier reading on the climb games;
- Eq. 6's weight is r_hat_t, the step's own Eq. 5 reward (Algorithm 1 line 13 computes it after
  observing r_t), so a pair near M* is paid only where it is valuable on the task being played;
  `--eq6-r-hat nearest` pays the r_hat of the nearest element of M* instead;
- N_hat adds the visits of all of D, the policy's dataset (line 19), warm-up episodes included;
  `--global-count-from last-batch` adds its last batch_size trajectories only.
Decisions where the paper is silent (ours), each next to its code:
- meta-training steps are a total, split evenly over the E exploration policies;
- f_d(0) is undefined, so the count N includes the current visit (a first visit earns r_hat);
- eps of Eq. 6 is an argument (default: half the distance between two joint actions that
  differ in one agent's one-hot action, so only the same joint action in a nearby state counts);
- M* keeps each distinct (s, a) once, with its largest r_hat;
- eps(t) of Algorithm 2 falls linearly from 1 to 0 over `exploration_anneal_fraction` of the
  meta-testing steps;
- plus the backbone's decisions, listed in baselines/maddpg.py, with its rMADDPG flags (`--share-policy`,
  `--epsilon-start/-end/-anneal-steps`, `--greedy-target-actions`): they apply to every learner MESA trains.
"""

import copy
import ctypes
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
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # repo root, for envs/
from envs.multiagent import DEFAULT_SETTINGS, ENV_IDS, check_disjoint, make_env, sample_tasks  # noqa: E402

SCRIPT = "mesa_maddpg.py"  # in checkpoints: a checkpoint resumes only in the script that wrote it


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """name of this experiment (the run directory's second field)"""
    seed: int = 1
    """seed of random, numpy, torch and the environments' resets"""
    torch_deterministic: bool = True
    """torch.backends.cudnn.deterministic and deterministic algorithms where torch has them"""
    cuda: bool = True
    """use CUDA when it is available"""
    torch_threads: int = 1
    """CPU threads of torch: these networks are tiny, one thread is fastest (more threads spin and wait)"""
    checkpoint_every: int = 0
    """env steps (all phases together) between checkpoints of the whole training state, `runs/{run_name}/checkpoint.pt` (0: none)"""
    resume: Optional[str] = None
    """continue an interrupted run bit for bit: `--resume` alone the newest one of this command under runs/, or a run folder or checkpoint"""

    # environment and tasks
    env_id: str = "climb-multi-stage"
    """one of climb-one-step, climb-multi-stage, mpe-climb, swimmer-climb"""
    task_seed: int = 0
    """seed of the task draw: which tasks are the training and which the test tasks"""
    num_train_tasks: Optional[int] = None
    """meta-training tasks B (None: the paper's, Table 1: 10 climb, 30 MPE and Swimmer)"""
    num_test_tasks: Optional[int] = None
    """meta-testing tasks, each learned by a fresh MADDPG (None: the paper's, Table 1: 5 climb, 15 MPE, 6 Swimmer)"""
    n_agents: Optional[int] = None
    """env setting n, climb and MPE games (None: the env's default, 2)"""
    num_actions: Optional[int] = None
    """env setting U: actions (climb) or landmarks (MPE) (None: the env's default, 10 climb, 5 MPE)"""
    k: Optional[int] = None
    """env setting k of the MPE climb game: agents needed on the target landmark (None: 2)"""
    stages: Optional[int] = None
    """env setting S of the multi-stage climb game (None: 5)"""
    max_steps: Optional[int] = None
    """env setting episode length of MPE and Swimmer (None: 100 MPE, 1000 Swimmer)"""

    # MADDPG (Appendix B.2, Table 1)
    total_timesteps: Optional[int] = None
    """meta-testing env steps per test task (None: Table 1, 50k one-step, 100k multi-stage, 3M MPE, 2.5M Swimmer)"""
    learning_rate: Optional[float] = None
    """Adam learning rate of actors and critic (None: Table 1, 5e-3 climb, 1e-4 MPE and Swimmer)"""
    batch_size: Optional[int] = None
    """trajectories per gradient step (None: Table 1, 32 climb, 300 MPE, 8 Swimmer)"""
    learning_starts: Optional[int] = None
    """env steps of uniformly random actions before learning (None: Table 1, 3000 climb, 50k MPE and Swimmer)"""
    hidden_dim: int = 64
    """units of the GRU layer (and of the layer before it) in actors and critic (Table 1: one GRU layer, 64 units)"""
    train_frequency: Optional[int] = None
    """env steps between gradient steps (None: 8 one-step, 20 multi-stage, 100 MPE, 1000 Swimmer; paper silent)"""
    buffer_size: Optional[int] = None
    """replay capacity in trajectories (None: 5000 climb, 2000 MPE, 200 Swimmer; paper silent)"""
    gamma: float = 0.99
    """discount factor (paper silent)"""
    tau: float = 0.01
    """soft target-update rate (paper silent; the original MADDPG's 0.01)"""
    max_grad_norm: float = 10.0
    """gradient-norm clip of actors and critic (paper silent)"""
    gumbel_temperature: float = 1.0
    """temperature of the straight-through Gumbel-softmax, discrete actions (paper silent)"""
    logit_penalty: float = 1e-3
    """L2 penalty on the actors' logits/pre-tanh outputs (original MADDPG code; paper silent)"""
    exploration_noise: float = 0.1
    """std of the Gaussian action noise, continuous actions, in units of half the action range (paper silent)"""
    share_policy: bool = False
    """one actor for all agents (marlbenchmark/off-policy rMADDPG's default; ours: one per agent). With identical
    observations (the climb games) the agents then share one greedy action: a diagonal joint action (x, x)"""
    epsilon_start: float = 0.0
    """probability that an agent's explore action is uniformly random instead of the Gumbel sample, at step 0
    (discrete actions; rMADDPG: 1.0; ours: 0, off)"""
    epsilon_end: float = 0.0
    """that probability after --epsilon-anneal-steps (rMADDPG: 0.05)"""
    epsilon_anneal_steps: int = 50_000
    """env steps (of the learner's own phase) of the linear decay from --epsilon-start to --epsilon-end (rMADDPG: 50k)"""
    greedy_target_actions: bool = False
    """the critic's targets use the target actors' argmax (discrete) or noiseless tanh (continuous), as rMADDPG,
    instead of a Gumbel sample / noisy action (ours). rMADDPG also has no logit penalty (--logit-penalty 0),
    tau 0.005 (--tau 0.005) and one update per episode (--train-frequency = the episode length)"""

    # MESA: meta-training (section 5.1, Algorithm 1, Table 1)
    collect_steps: Optional[int] = None
    """MESA: high-reward collection env steps, all training tasks together (None: Table 1's per training task x B:
    10 x 30k climb, 30 x 500k MPE, 30 x 1M Swimmer; Algorithm 1 line 4 trains f on each task, like meta-testing's per-task budget)"""
    meta_train_steps: Optional[int] = None
    """MESA: env steps of exploration-policy training, all E together (None: Table 1, 50k one-step, 100k multi-stage, 3M MPE and Swimmer)"""
    num_exploration_policies: Optional[int] = None
    """MESA: E, exploration policies (None: Table 1, 4 climb, 2 MPE (Table 1: 2-4), 2 Swimmer; loaded: the file's)"""
    eq6_r_hat: Literal["step", "nearest"] = "step"
    """MESA: the r_hat that weights Eq. 6: "step", r_hat_t of the rollout's own step t by Eq. 5 (Eq. 6's subscript t; Algorithm 1
    line 13 computes it after observing r_t), or "nearest", the r_hat stored with the nearest element of M* (our earlier reading)"""
    global_count_from: Literal["all", "last-batch"] = "all"
    """MESA: the visits N_hat adds after each exploration policy (Algorithm 1 line 19, "Update N_hat using D"): "all", every
    trajectory the policy's training played (its dataset D, warm-up included), or "last-batch", its last batch_size (our earlier reading)"""
    reward_threshold: float = 1.0
    """MESA: R*, a pair with reward >= R* is high-reward (Table 1: 1 for the sparse-reward tasks)"""
    relabel_gamma: float = 0.05
    """MESA: gamma of the reward densification Eq. 5 (Table 1: 0.05)"""
    count_power: float = 5.0
    """MESA: f_d(x) = 1 / x^count_power, the count decay of Eq. 6 (Table 1: 1/x^5)"""
    num_clusters: Optional[int] = None
    """MESA: C, KMeans clusters of the hash phi (None: 64; paper silent)"""
    kmeans_iterations: int = 50
    """MESA: Lloyd iterations of the KMeans hash (paper silent)"""
    distance_eps: Optional[float] = None
    """MESA: eps of Eq. 6, L2 distance to M* below which a pair is rewarded (None: 0.7 climb, 0.3 MPE and Swimmer; paper silent)"""
    max_mstar_size: int = 20_000
    """MESA: M* is subsampled (seeded) to at most this many distinct pairs, bounding Eq. 6's nearest-neighbour cost (paper silent)"""
    exploration_policies: Optional[str] = None
    """MESA: a run's exploration_policies.pt: skip meta-training and load them, tensors only (None: meta-train)"""

    # MESA: meta-testing (section 5.2, Algorithm 2)
    exploration_start: float = 1.0
    """MESA: eps(0), probability that an exploration policy plays an episode (section 5.2: annealed)"""
    exploration_end: float = 0.0
    """MESA: eps at and after the end of the annealing"""
    exploration_anneal_fraction: float = 0.5
    """MESA: fraction of the meta-testing steps over which eps falls linearly (paper silent)"""

    # evaluation and logging
    eval_frequency: Optional[int] = None
    """env steps between greedy evaluations logged under eval/ (None: total_timesteps // 20)"""
    eval_episodes: int = 5
    """greedy episodes per evaluation (the climb games are deterministic: 1 would do)"""
    log_frequency: int = 1000
    """env steps between losses/ and charts/ logs (each log syncs the device once)"""


# ---------------------------------------------------------------------------------------------
# Environment set-up
# ---------------------------------------------------------------------------------------------
# --- shared: paper-defaults ---
PAPER_DEFAULTS = {  # Appendix B.2 Table 1, per environment; "ours" where the paper is silent
    #                   test steps  lr     batch  random  train_freq (ours)  buffer (ours)  tasks train/test
    "climb-one-step": dict(total_timesteps=50_000, learning_rate=5e-3, batch_size=32, learning_starts=3000,
                           train_frequency=8, buffer_size=5000, num_train_tasks=10, num_test_tasks=5),
    "climb-multi-stage": dict(total_timesteps=100_000, learning_rate=5e-3, batch_size=32, learning_starts=3000,
                              train_frequency=20, buffer_size=5000, num_train_tasks=10, num_test_tasks=5),
    "mpe-climb": dict(total_timesteps=3_000_000, learning_rate=1e-4, batch_size=300, learning_starts=50_000,
                      train_frequency=100, buffer_size=2000, num_train_tasks=30, num_test_tasks=15),
    "swimmer-climb": dict(total_timesteps=2_500_000, learning_rate=1e-4, batch_size=8, learning_starts=50_000,
                          train_frequency=1000, buffer_size=200, num_train_tasks=30, num_test_tasks=6),
}


def resolve_args(args, *extra_defaults):
    """A copy of args with every None hyperparameter set to the paper's value for args.env_id
    (PAPER_DEFAULTS, then each extra {env_id: {field: value}} table); BadInput (one line,
    naming what is valid) for an unknown env id."""
    if args.env_id not in ENV_IDS:
        raise BadInput(f"--env-id {args.env_id}: must be one of {', '.join(ENV_IDS)}")
    args = copy.copy(args)
    for table in (PAPER_DEFAULTS, *extra_defaults):
        for name, value in table[args.env_id].items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    if args.eval_frequency is None:
        args.eval_frequency = max(1, args.total_timesteps // 20)
    return args


# (envs.multiagent's setting, the Args field that sets it)
ENV_FLAGS = (("n", "n_agents"), ("U", "num_actions"), ("k", "k"), ("S", "stages"), ("max_steps", "max_steps"))


def env_settings(args) -> dict:
    """The env settings given on the command line, under envs.multiagent's names. The env checks
    them (U >= 2, k <= n, ...) when it draws and builds a task; adding them one at a time tells
    which flag it refuses: BadInput `--flag VALUE: <the env's reason>`."""
    settings = {}
    for key, name in ENV_FLAGS:
        value = getattr(args, name)
        if value is None:
            continue
        flag = f"--{name.replace('_', '-')} {value}"
        if key not in DEFAULT_SETTINGS[args.env_id]:
            valid = ", ".join(f"--{field.replace('_', '-')}" for k, field in ENV_FLAGS if k in DEFAULT_SETTINGS[args.env_id])
            raise BadInput(f"{flag}: not a setting of {args.env_id} (its settings: {valid})")
        settings[key] = value
        try:  # one task drawn and one env built per flag given (for Swimmer, a MuJoCo model loaded: milliseconds)
            _, (task,) = sample_tasks(args.env_id, 0, 1, 0, **settings)
            make_env(args.env_id, task, **settings).close()
        except ValueError as error:
            raise BadInput(f"{flag}: {error}") from None
    return settings


def draw_tasks(args, settings):
    """(train_tasks, test_tasks) of args.task_seed, checked disjoint; BadInput (one line) when the
    task space holds fewer distinct tasks than asked for."""
    try:
        train_tasks, test_tasks = sample_tasks(args.env_id, args.num_train_tasks, args.num_test_tasks, args.task_seed, **settings)
    except ValueError as error:
        counts = f"--num-train-tasks {args.num_train_tasks} and --num-test-tasks {args.num_test_tasks}"
        raise BadInput(f"{counts}: {error}") from None
    check_disjoint(train_tasks, test_tasks)  # a bug of the draw if it fails, not bad input
    return train_tasks, test_tasks


def env_spaces(env):
    """(n, obs_dim, act_dim, discrete, action_low, action_high) of a ParallelEnv whose agents
    share one observation and one action space (true of every env in envs/)."""
    agents = env.possible_agents
    obs_space, act_space = env.observation_space(agents[0]), env.action_space(agents[0])
    for a in agents[1:]:
        if env.observation_space(a).shape != obs_space.shape or env.action_space(a) != act_space:
            raise ValueError("the stacked actors need agents with identical observation and action spaces")
    discrete = hasattr(act_space, "n")
    act_dim = int(act_space.n) if discrete else int(np.prod(act_space.shape))
    low = None if discrete else np.asarray(act_space.low, np.float32)
    high = None if discrete else np.asarray(act_space.high, np.float32)
    return len(agents), int(np.prod(obs_space.shape)), act_dim, discrete, low, high


def report_scale(env_id: str, max_steps: int) -> float:
    """Factor from summed episode reward to the reported return: the climb games report the
    return averaged over timesteps (section 6.2: optimal 1, sub-optimal 0.5), MPE and Swimmer the sum."""
    return 1.0 / max_steps if env_id.startswith("climb") else 1.0
# --- end shared ---
# MESA: Appendix B.2 Table 1, per environment; "ours" where the paper is silent. C (num_clusters): with 16 the
# first two climb-game exploration policies covered every cluster, and N_hat left the third and fourth an Eq. 6
# return near 0 (measured: 3e-2 to 7e-7), so they stayed untrained; with 64 all four earn 1-2.5
MESA_DEFAULTS = {
    "climb-one-step": dict(meta_train_steps=50_000, num_exploration_policies=4, num_clusters=64, distance_eps=0.7),
    "climb-multi-stage": dict(meta_train_steps=100_000, num_exploration_policies=4, num_clusters=64, distance_eps=0.7),
    "mpe-climb": dict(meta_train_steps=3_000_000, num_exploration_policies=2, num_clusters=64, distance_eps=0.3),
    "swimmer-climb": dict(meta_train_steps=3_000_000, num_exploration_policies=2, num_clusters=64, distance_eps=0.3),
}
# MESA: Table 1's "high-reward data collection steps", read per training task: each training task is a fresh learner
# trained with f (Algorithm 1 lines 3-4), as each test task is one with Table 1's per-task meta-testing steps. Read as
# a total (our earlier reading: 30k / 10 tasks = 3000 per climb task, 500k / 30 = 16.7k per MPE task), every collection
# step fell inside the 3000 / 50k random warm-up, so f never trained and line 4's "train" never happened.
COLLECT_STEPS_PER_TASK = {"climb-one-step": 30_000, "climb-multi-stage": 30_000, "mpe-climb": 500_000,
                          "swimmer-climb": 1_000_000}


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
# --- shared: networks ---
def tanh(x):
    """tanh(x) = 2 sigmoid(2x) - 1, the same function (within 2e-7 of torch.tanh) at a third of its CPU
    time: torch.tanh was the slowest elementwise op of the GRU steps (torch 2.13, one thread: 120 against
    37 us at [2, 300, 64], 9.9 against 4.5 ms at [2, 30000, 64])."""
    return torch.sigmoid(2.0 * x).mul(2.0).sub(1.0)


class StackedGRUNet(nn.Module):
    """`num_nets` independent networks x -> Linear-ReLU -> GRU cell -> Linear, evaluated in one
    batched pass (per-net weights stacked on dim 0, `torch.baddbmm`): n actors cost one call,
    not a Python loop over agents. GRU equations as torch.nn.GRU (gates r, z, n)."""

    def __init__(self, num_nets: int, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()

        def linear(fan_in, fan_out):  # nn.Linear's default init, one weight per net
            bound = 1.0 / math.sqrt(fan_in)
            weight = nn.Parameter(torch.empty(num_nets, fan_in, fan_out).uniform_(-bound, bound))
            bias = nn.Parameter(torch.empty(num_nets, 1, fan_out).uniform_(-bound, bound))
            return weight, bias

        self.hidden_dim = hidden_dim
        self.w_in, self.b_in = linear(in_dim, hidden_dim)
        self.w_ih, self.b_ih = linear(hidden_dim, 3 * hidden_dim)
        self.w_hh, self.b_hh = linear(hidden_dim, 3 * hidden_dim)
        self.w_out, self.b_out = linear(hidden_dim, out_dim)

    def input_gates(self, x):
        """x [nets, M, in] -> the GRU's input-side gate pre-activations [nets, M, 3H]."""
        return torch.baddbmm(self.b_ih, F.relu(torch.baddbmm(self.b_in, x, self.w_in)), self.w_ih)

    def hidden_gates(self, h):
        """h [nets, M, H] -> the GRU's hidden-side gate pre-activations [nets, M, 3H]."""
        return torch.baddbmm(self.b_hh, h, self.w_hh)

    def cell(self, gates_x, h, gates_h=None):
        """One GRU step: gates_x [nets, M, 3H], h [nets, M, H] -> h' [nets, M, H]. `gates_h`:
        hidden_gates(h) when the caller has them (they broadcast against gates_x)."""
        if gates_h is None:
            gates_h = self.hidden_gates(h)  # [nets, M, 3H]
        x_r, x_z, x_n = gates_x.chunk(3, dim=-1)
        h_r, h_z, h_n = gates_h.chunk(3, dim=-1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = tanh(torch.addcmul(x_n, r, h_n))  # tanh(x_n + r * h_n)
        return torch.lerp(n, h, z)  # (1 - z) * n + z * h

    def head(self, h):
        """h [nets, M, H] -> outputs [nets, M, out]."""
        return torch.baddbmm(self.b_out, h, self.w_out)

    def step(self, x, h):
        """One step from given hidden states: x [nets, M, in], h [nets, M, H] -> (out, h').
        A single net (num_nets = 1) serves any number of members: x [members, M, in]."""
        members, M, _ = x.shape
        if members != self.w_in.shape[0]:  # one shared net: the members fold into its batch, [1, members*M, in]
            out, h = self.step(x.reshape(1, members * M, -1), h.reshape(1, members * M, -1))
            return out.reshape(members, M, -1), h.reshape(members, M, -1)
        h = self.cell(self.input_gates(x), h)
        return self.head(h), h

    def forward(self, x):
        """Whole sequences from a zero hidden state: x [nets, B, T, in] -> (out [nets, B, T, out],
        hs [nets, B, T, H]), hs[:, :, t] the hidden state after step t. A single net (num_nets = 1)
        serves any number of members: x [members, B, T, in]."""
        nets, B, T, _ = x.shape
        if nets != self.w_in.shape[0]:  # one shared net: the members fold into its batch, [1, members*B, T, in]
            out, hs = self.forward(x.reshape(1, nets * B, T, -1))
            return out.reshape(nets, B, T, -1), hs.reshape(nets, B, T, -1)
        gates_x = self.input_gates(x.reshape(nets, B * T, -1)).reshape(nets, B, T, -1)  # [nets, B, T, 3H]
        h = x.new_zeros(nets, B, self.hidden_dim)
        hs = []
        # the recurrence is the only per-step Python work; T = 1..1000. Easy to overlook: unbind, not
        # gates_x[:, :, t] (a select's backward zero-fills a whole gates_x-sized tensor per step:
        # O(T^2) memory traffic, two thirds of an update's time at T = 100 before we measured it)
        for gates_t in gates_x.unbind(2):  # [nets, B, 3H] each
            h = self.cell(gates_t, h)
            hs.append(h)
        hs = torch.stack(hs, dim=2)  # [nets, B, T, H]
        return self.head(hs.reshape(nets, B * T, -1)).reshape(nets, B, T, -1), hs
# --- end shared ---


# ---------------------------------------------------------------------------------------------
# Replay buffer
# ---------------------------------------------------------------------------------------------
# --- shared: buffer ---
class TrajectoryBuffer:
    """Whole trajectories, padded to the env's max_steps T, stored on the device:
    obs [cap, n, T+1, obs], actions [cap, n, T, act] (one-hot or in [-1, 1]), rewards, terminated,
    mask [cap, T] (1 on real steps). Oldest trajectory overwritten first."""

    def __init__(self, capacity, n, T, obs_dim, act_dim, device):
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.obs = torch.zeros(capacity, n, T + 1, obs_dim, device=device)
        self.actions = torch.zeros(capacity, n, T, act_dim, device=device)
        self.rewards = torch.zeros(capacity, T, device=device)
        self.terminated = torch.zeros(capacity, T, device=device)
        self.mask = torch.zeros(capacity, T, device=device)

    def add(self, episode, rewards=None):
        """Store one run_episode() result; `rewards` [T] replaces the env's rewards if given."""
        i = self.pos
        for name in ("obs", "actions", "terminated", "mask"):
            getattr(self, name)[i] = torch.as_tensor(episode[name])
        self.rewards[i] = torch.as_tensor(episode["rewards"] if rewards is None else rewards)
        self.pos, self.size = (self.pos + 1) % self.capacity, min(self.size + 1, self.capacity)

    def sample(self, batch_size, generator):
        idx = torch.randint(self.size, (batch_size,), generator=generator).to(self.obs.device)
        return {name: getattr(self, name)[idx] for name in ("obs", "actions", "rewards", "terminated", "mask")}

    def state_dict(self) -> dict:
        """For a checkpoint: the filled trajectories (cloned: a slice would save the whole storage), pos and size."""
        fields = ("obs", "actions", "rewards", "terminated", "mask")
        return {"pos": self.pos, "size": self.size, **{name: getattr(self, name)[: self.size].clone() for name in fields}}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = state["pos"], state["size"]
        for name in ("obs", "actions", "rewards", "terminated", "mask"):
            getattr(self, name)[: self.size] = state[name]
# --- end shared ---


# ---------------------------------------------------------------------------------------------
# MADDPG (Lowe et al. 2017) on trajectories: acting, one episode, one update
# ---------------------------------------------------------------------------------------------
# --- shared: maddpg ---
class MADDPG:
    """n GRU actors (stacked; one shared by all agents with args.share_policy), one centralized GRU
    critic over all observations and actions, target copies of both, Adam; `update` is one
    gradient step of critic and actors. `epsilon`: the probability that an agent's explore-mode
    action is replaced by a uniformly random one (discrete actions; the loop sets it every episode
    from `greedy_epsilon`, 0 unless --epsilon-start is set)."""

    def __init__(self, n, obs_dim, act_dim, discrete, args, device):
        self.n, self.act_dim, self.discrete, self.args = n, act_dim, discrete, args
        self.epsilon = 0.0
        # shared policy: one net, every agent's observations folded into its batch (StackedGRUNet.step/forward)
        self.actor = StackedGRUNet(1 if args.share_policy else n, obs_dim, args.hidden_dim, act_dim).to(device)
        self.critic = StackedGRUNet(1, n * (obs_dim + act_dim), args.hidden_dim, 1).to(device)
        self.target_actor, self.target_critic = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.learning_rate)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=args.learning_rate)

    PARTS = ("actor", "critic", "target_actor", "target_critic", "actor_optimizer", "critic_optimizer")

    def state_dict(self) -> dict:
        """Networks, targets and optimizers, {part: its state_dict}: a checkpoint's learner."""
        return {name: getattr(self, name).state_dict() for name in self.PARTS}

    def load_state_dict(self, state: dict) -> None:
        for name in self.PARTS:
            getattr(self, name).load_state_dict(state[name])

    def policy_action(self, out, mode):
        """Actor outputs [n, ..., act] -> actions [n, ..., act] (one-hot, or in [-1, 1]).
        mode "train": differentiable (straight-through Gumbel-softmax / tanh); "explore": a
        sample (Gumbel-max = categorical / tanh + Gaussian noise); "greedy": argmax / tanh."""
        if self.discrete:
            if mode == "greedy":
                return F.one_hot(out.argmax(-1), self.act_dim).float()
            # forward: a one-hot sample; backward: the softmax's gradient (straight-through)
            return F.gumbel_softmax(out, tau=self.args.gumbel_temperature, hard=True)
        action = torch.tanh(out)
        if mode == "explore":
            action = (action + self.args.exploration_noise * torch.randn_like(action)).clamp(-1.0, 1.0)
        return action

    @torch.no_grad()
    def act(self, obs, h, mode):
        """obs [n, obs] of one env step, h [n, 1, H] or None -> (actions [n, act], h')."""
        if h is None:
            h = obs.new_zeros(self.n, 1, self.args.hidden_dim)
        out, h = self.actor.step(obs[:, None], h)  # out [n, 1, act]
        action = self.policy_action(out[:, 0], mode)  # [n, act]
        if mode == "explore" and self.discrete and self.epsilon > 0:  # epsilon-greedy on top of the Gumbel sample
            # (rMADDPG's exploration; a Python float, no host sync): each agent independently
            take_random = torch.rand(self.n, 1, device=obs.device) < self.epsilon  # [n, 1]
            uniform = F.one_hot(torch.randint(self.act_dim, (self.n,), device=obs.device), self.act_dim).float()
            action = torch.where(take_random, uniform, action)
        return action, h

    def update(self, batch):
        """One MADDPG step on a batch of trajectories; returns detached losses (no host sync)."""
        args, n = self.args, self.n
        obs = batch["obs"].transpose(0, 1)  # [n, B, T+1, obs]
        _, B, T1, _ = obs.shape
        T = T1 - 1
        actions = batch["actions"].permute(0, 2, 1, 3).reshape(B, T, -1)  # [B, T, n*act]
        joint_obs = obs.permute(1, 2, 0, 3).reshape(B, T1, -1)  # [B, T+1, n*obs]
        mask = batch["mask"]  # [B, T]

        # CRITIC: y_t = r_t + gamma (1 - terminated_t) Q'(history_t, o_{t+1}, mu'(o_{t+1}))
        x = torch.cat([joint_obs[:, :T], actions], dim=-1)[None]  # [1, B, T, n*(obs+act)]
        with torch.no_grad():
            target_out, _ = self.target_actor(obs)  # [n, B, T+1, act]
            # a sample of the target policy (ours), or its argmax / noiseless tanh (rMADDPG: --greedy-target-actions)
            target_mode = "greedy" if args.greedy_target_actions else "explore"
            next_actions = self.policy_action(target_out[:, :, 1:], target_mode)  # [n, B, T, act]
            next_actions = next_actions.permute(1, 2, 0, 3).reshape(B, T, -1)  # [B, T, n*act]
            _, target_hs = self.target_critic(x)  # [1, B, T, H]: hidden after the real step t
            x_next = torch.cat([joint_obs[:, 1:], next_actions], dim=-1)  # [B, T, n*(obs+act)]
            # one batched GRU step from every h_t: the target critic sees the real history
            next_q, _ = self.target_critic.step(x_next.reshape(1, B * T, -1), target_hs.reshape(1, B * T, -1))
            next_q_value = batch["rewards"] + args.gamma * (1.0 - batch["terminated"]) * next_q.reshape(B, T)
        q_values, critic_hs = self.critic(x)  # [1, B, T, 1], [1, B, T, H]
        td_error = (q_values.reshape(B, T) - next_q_value) * mask
        critic_loss = td_error.pow(2).sum() / mask.sum()
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), args.max_grad_norm)
        self.critic_optimizer.step()

        # ACTOR: agent i's own action from its policy, the others' from the buffer (MADDPG),
        # all n substitutions in one critic call from the critic's hidden state before step t
        out, _ = self.actor(obs[:, :, :T])  # [n, B, T, act]
        policy_actions = self.policy_action(out, "train")  # [n, B, T, act]
        buffer_actions = batch["actions"].permute(0, 2, 1, 3)  # [B, T, n, act]
        own = torch.eye(n, dtype=torch.bool, device=obs.device).reshape(n, 1, 1, n, 1)  # [n(i), 1, 1, n(j), 1]
        joint = torch.where(own, policy_actions[:, :, :, None], buffer_actions[None])  # [n, B, T, n, act]
        h_prev = torch.cat([critic_hs.new_zeros(1, B, 1, critic_hs.shape[-1]), critic_hs[:, :, :-1]], dim=2)
        h_prev = h_prev.detach().reshape(1, B * T, -1)  # [1, B*T, H]
        x_pi = torch.cat([joint_obs[None, :, :T].expand(n, B, T, -1), joint.reshape(n, B, T, -1)], dim=-1)
        gates_x = self.critic.input_gates(x_pi.reshape(1, n * B * T, -1)).reshape(n, B * T, -1)  # [n, B*T, 3H]
        # the hidden side is the same for the n substitutions: computed once, broadcast over them
        h_pi = self.critic.cell(gates_x, h_prev, self.critic.hidden_gates(h_prev))  # [n, B*T, H]
        q_pi = self.critic.head(h_pi.reshape(1, n * B * T, -1))  # [1, n*B*T, 1]
        actor_loss = -(q_pi.reshape(n, B, T) * mask).sum() / (n * mask.sum())
        actor_loss = actor_loss + args.logit_penalty * out.pow(2).mean()
        self.actor_optimizer.zero_grad()
        # inputs=: the actors' grads only; the critic's weight grads of this loss (a third of the
        # actor step's matmul work) would be computed and thrown away
        actor_loss.backward(inputs=list(self.actor.parameters()))
        nn.utils.clip_grad_norm_(self.actor.parameters(), args.max_grad_norm)
        self.actor_optimizer.step()

        # TARGETS: soft update
        with torch.no_grad():
            for net, target in ((self.actor, self.target_actor), (self.critic, self.target_critic)):
                torch._foreach_lerp_(list(target.parameters()), list(net.parameters()), args.tau)
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
                "q_value": (q_values.reshape(B, T) * mask).sum().detach() / mask.sum()}


def seed_everything(seed, torch_deterministic):
    """Seed random, numpy and torch (network init, Gumbel and Gaussian noise); returns the numpy
    rng of uniformly random actions and task choices and the torch generator of replay sampling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


def run_episode(env, policy, seed, spaces):
    """Play one episode. policy(obs [n, obs] tensor, h) -> (actions [n, act] one-hot or in
    [-1, 1], h). Returns numpy arrays padded to T = env.max_steps: obs [n, T+1, obs],
    actions [n, T, act], rewards, terminated, mask [T], states [T, state] (env.state() before
    each action) and the summed reward, NaN if the policy gave a non-finite action: the episode
    stops before the env sees it (MuJoCo fails on a NaN far from its cause), the caller stops the run."""
    n, obs_dim, act_dim, discrete, low, high = spaces
    T, agents = env.max_steps, env.possible_agents
    ep = {"obs": np.zeros((n, T + 1, obs_dim), np.float32), "actions": np.zeros((n, T, act_dim), np.float32),
          "rewards": np.zeros(T, np.float32), "terminated": np.zeros(T, np.float32), "mask": np.zeros(T, np.float32)}
    states = []
    obs, _ = env.reset(seed=seed)
    h, finite = None, True
    for t in range(T):
        ep["obs"][:, t] = np.stack([np.asarray(obs[a], np.float32).reshape(-1) for a in agents])
        states.append(np.asarray(env.state(), np.float32).reshape(-1))
        actions, h = policy(torch.as_tensor(ep["obs"][:, t]), h)
        actions = actions.cpu().numpy()  # host sync: the env steps on the CPU
        ep["actions"][:, t] = actions
        if not np.isfinite(actions).all():
            finite = False
            break
        if discrete:
            env_actions = actions.argmax(-1)
        else:  # [-1, 1] -> the Box's bounds
            env_actions = low + (actions + 1.0) * 0.5 * (high - low)
        obs, rewards, terminations, truncations, _ = env.step({a: env_actions[i] for i, a in enumerate(agents)})
        ep["rewards"][t] = rewards[agents[0]]  # team reward: identical for all agents
        ep["terminated"][t] = float(terminations[agents[0]])
        ep["mask"][t] = 1.0
        if terminations[agents[0]] or truncations[agents[0]]:
            break
    # the observation after the last step: bootstrapped from when the episode was truncated
    ep["obs"][:, t + 1] = np.stack([np.asarray(obs[a], np.float32).reshape(-1) for a in agents])
    ep["states"] = np.stack(states)  # [t+1, state]
    ep["return"] = float(ep["rewards"].sum()) if finite else math.nan
    return ep


def random_policy(spaces, rng):
    """Uniformly random actions (Table 1's "random exploration" steps), from a seeded numpy rng."""
    n, _, act_dim, discrete, _, _ = spaces

    def policy(obs, h):
        if discrete:
            return F.one_hot(torch.as_tensor(rng.integers(act_dim, size=n)), act_dim).float(), h
        return torch.as_tensor(rng.uniform(-1.0, 1.0, size=(n, act_dim)), dtype=torch.float32), h

    return policy


def learner_policy(learner, mode, device):
    """The learner's actors as a run_episode policy (mode: "explore" or "greedy")."""
    return lambda obs, h: learner.act(obs.to(device), h, mode)


def evaluate(env, learner, episodes, seed, spaces, device) -> float:
    """Mean summed reward of `episodes` greedy episodes."""
    policy = learner_policy(learner, "greedy", device)
    return float(np.mean([run_episode(env, policy, seed + i, spaces)["return"] for i in range(episodes)]))


def greedy_epsilon(step: int, args) -> float:
    """Probability of a uniformly random action per agent for an explore episode starting at env step
    `step`: linear from epsilon_start to epsilon_end over epsilon_anneal_steps, then flat (rMADDPG:
    1.0 -> 0.05 over 50k steps; ours: 0, off)."""
    fraction = min(step / args.epsilon_anneal_steps, 1.0)
    return args.epsilon_start + fraction * (args.epsilon_end - args.epsilon_start)


def train_steps(learner, rb, global_step, next_train, args, generator):
    """The backbone's cadence (paper silent): once global_step >= learning_starts, one gradient
    step on batch_size trajectories per train_frequency env steps. -> (losses or {}, next_train)."""
    losses = {}
    while global_step >= next_train and global_step >= args.learning_starts:
        losses = learner.update(rb.sample(args.batch_size, generator))
        next_train += args.train_frequency
    return losses, next_train
# --- end shared ---


# ---------------------------------------------------------------------------------------------
# MESA's equations (section 5)
# ---------------------------------------------------------------------------------------------
def relabel_rewards(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 5, reward densification within one trajectory: rewards [..., T] -> r_hat [..., T],
    r_hat_t = r_t if r_t > 0, else gamma^(t' - t) r_t' with t' the first later step with
    r_t' > 0, and 0 if there is none (paper silent on that case). A reward <= 0 counts as the
    zero case (the paper's rewards are >= 0)."""
    r_hat = torch.zeros_like(rewards)
    carry = torch.zeros_like(rewards[..., 0])  # gamma^(t' - t) r_t' seen from step t
    for t in range(rewards.shape[-1] - 1, -1, -1):
        positive = rewards[..., t] > 0
        carry = torch.where(positive, rewards[..., t], gamma * carry)
        r_hat[..., t] = carry
    return r_hat


def densified_rewards(rewards: torch.Tensor, threshold: float, gamma: float) -> torch.Tensor:
    """Eq. 5 as section 5.1.1 applies it: rewards [..., T] -> r_hat [..., T], the relabeled reward
    of every step of one trajectory towards its *valuable* (r >= R*) steps. Trap: Eq. 5 relabels
    towards any later r > 0, but only a valuable later pair earns a zero-reward pair a positive
    reward (5.1.1: "leads to a valuable state-action pair"), so the rewards below R* (the climb
    games' 0.5) are zeroed before relabeling. The same r_hat_t serves M* (Algorithm 1 line 5) and
    Eq. 6 (line 13)."""
    valuable = torch.where(rewards >= threshold, rewards, torch.zeros_like(rewards))  # [..., T]
    return relabel_rewards(valuable, gamma)


def high_reward_pairs(features: torch.Tensor, rewards: torch.Tensor, threshold: float, gamma: float):
    """Section 5.1.1 / Algorithm 1 line 5: the pairs of one trajectory that join M*.
    features [T, D] (joint state-action vectors), rewards [T] -> (features [m, D], r_hat [m]):
    the valuable pairs (r_t >= R*) and, by Eq. 5, the earlier pairs that lead to one."""
    r_hat = densified_rewards(rewards, threshold, gamma)  # [T]
    keep = r_hat > 0
    return features[keep], r_hat[keep]


def state_action_features(states: np.ndarray, actions: np.ndarray) -> torch.Tensor:
    """The joint state-action vector (s_t, a_t) of M*, the hash and the distance of Eq. 6:
    states [T, S] (env.state()), actions [n, T, A] -> [T, S + n*A]."""
    T = states.shape[0]
    joint_actions = np.transpose(actions[:, :T], (1, 0, 2)).reshape(T, -1)  # [T, n*A]
    return torch.as_tensor(np.concatenate([states, joint_actions], axis=1))


def kmeans(points: torch.Tensor, num_clusters: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """The hash phi of section 5.3: Lloyd's KMeans over M*. points [M, D] -> centroids [C', D],
    C' = min(C, M). Seeded initialisation on C' distinct points; an empty cluster keeps its centroid."""
    num_clusters = min(num_clusters, points.shape[0])
    centroids = points[torch.randperm(points.shape[0], generator=generator)[:num_clusters]].clone()  # [C', D]
    for _ in range(iterations):
        assignment = torch.cdist(points, centroids).argmin(dim=1)  # [M]
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)  # [C', D]
        sizes = torch.bincount(assignment, minlength=num_clusters).unsqueeze(1)  # [C', 1]
        centroids = torch.where(sizes > 0, sums / sizes.clamp(min=1), centroids)
    return centroids


def hash_pairs(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """phi(s, a): features [T, D] -> cluster index [T] of the nearest centroid."""
    return torch.cdist(features, centroids).argmin(dim=1)


def trajectory_pseudo_counts(clusters: torch.Tensor, global_counts: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 lines 10 and 15: N := N_hat at the start of the trajectory, then
    N(phi(s_t, a_t)) += 1 at every step. clusters [T], global_counts N_hat [C] -> N [T], the
    count of step t's cluster *including* step t (f_d(0) = 1/0 is undefined; paper silent)."""
    visits = F.one_hot(clusters, global_counts.shape[0]).cumsum(dim=0)  # [T, C]: visits up to t
    return global_counts[clusters] + visits.gather(1, clusters[:, None]).squeeze(1)  # [T]


def count_decay(counts: torch.Tensor, power: float) -> torch.Tensor:
    """f_d of Eq. 6: a decreasing map N -> [0, 1], f_d(x) = 1 / x^power (Table 1: power 5)."""
    return counts.float().pow(-power)


def nearest_in_mstar(features: torch.Tensor, mstar_features: torch.Tensor):
    """The min over d in M* of Eq. 6: features [T, D], mstar_features [M, D] -> (distance [T],
    index [T]) of each pair's nearest element d* of M* (L2, Table 1's distance metric)."""
    return torch.cdist(features, mstar_features).min(dim=1)  # [T], [T]


def exploration_reward(r_hat: torch.Tensor, distance: torch.Tensor, counts: torch.Tensor, eps: float, power: float):
    """Eq. 6: r~_t = r_hat_t f_d(N(phi(s_t, a_t))) 1[min_{d in M*} ||(s_t, a_t) - d||_2 < eps].
    r_hat [T] the weight (the paper: r_hat_t, Eq. 5 on the rollout's own rewards, `densified_rewards`;
    --eq6-r-hat nearest: the r_hat of the nearest element of M*), distance [T] to the nearest element
    of M* (`nearest_in_mstar`), counts N [T] (`trajectory_pseudo_counts`) -> [T]."""
    return r_hat * count_decay(counts, power) * (distance < eps).float()


def updated_global_counts(global_counts: torch.Tensor, visited: list[torch.Tensor]) -> torch.Tensor:
    """Algorithm 1 line 19, "Update N_hat using D": N_hat [C] plus the visits of every cluster over
    the trajectories `visited` (a list of cluster indices [T_i], one per trajectory) -> N_hat' [C].
    The paper: every trajectory of the policy's dataset D; --global-count-from last-batch: its last batch."""
    if not visited:
        return global_counts.clone()
    return global_counts + torch.bincount(torch.cat(visited), minlength=global_counts.shape[0]).to(global_counts.dtype)


def exploration_probability(step: int, total: int, start: float, end: float, anneal_fraction: float) -> float:
    """eps(t) of Algorithm 2: probability that an exploration policy plays the next episode;
    linear from `start` to `end` over the first anneal_fraction * total steps (paper: "annealing")."""
    progress = min(step / max(anneal_fraction * total, 1.0), 1.0)
    return start + progress * (end - start)


# ---------------------------------------------------------------------------------------------
# Command line, validation
# ---------------------------------------------------------------------------------------------
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


# --- shared: cpu-memory ---
def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the system at once.

    An update allocates and frees dozens of 1-40 MB tensors (DrQ: the batch as float, conv activations and their
    gradients; MADDPG: GRU activations of whole trajectories); by default glibc unmaps such blocks when freed, and
    the next update faults fresh zeroed pages in again. Measured on one CPU thread: DrQ at batch 256, 94 ms of
    system time per update (a sixth of it), 5 ms with this; MADDPG on mpe-climb, 6% less CPU time per step.
    Linux with glibc only; elsewhere it does nothing. Numbers computed are unchanged.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks up to 32 MiB (glibc's largest setting) come from the heap
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap before returning any
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


# --- shared: maddpg-resume ---
# The MADDPG scripts play whole episodes and seed every env reset with the episode index, so they checkpoint between
# two episodes and need no env state: the learner, its replay buffer, the generators and the loop counters decide
# the rest of the run.
def learner_state(learner, rb, rng, sample_generator) -> dict:
    """The learner's part of a checkpoint: networks, targets, optimizers, replay buffer, and the generators: numpy's
    `rng` (random actions; MESA: draws of tasks and policies), `sample_generator` (replay sampling; MESA: M*'s
    subsample, KMeans) and the global ones (network initialisations, Gumbel and Gaussian action noise)."""
    return {**learner.state_dict(), "buffer": rb.state_dict(),
            "rng": {"numpy": rng_state(rng), "sample": sample_generator.get_state(), "global": global_rng_states()}}


def restore_learner_state(state: dict, learner, rb, rng, sample_generator) -> None:
    """learner_state's inverse, into a learner and buffer built afresh just before (their building draws from the
    global generator, as it did in the interrupted run; that generator is then set back to the checkpoint's)."""
    learner.load_state_dict(state)
    rb.load_state_dict(state["buffer"])
    set_rng_state(rng, state["rng"]["numpy"])
    sample_generator.set_state(state["rng"]["sample"])
    set_global_rng_states(state["rng"]["global"])


def event_file_sizes(folder: str) -> dict:
    """{name: bytes} of a run folder's TensorBoard event files; after writer.flush() each ends on a whole record."""
    names = sorted(name for name in os.listdir(folder) if name.startswith("events.out.tfevents."))
    return {name: os.path.getsize(os.path.join(folder, name)) for name in names}


def restore_event_files(folder: str, sizes: dict) -> None:
    """A run folder's TensorBoard logs as they were at a checkpoint (`sizes`: event_file_sizes then): each file cut
    back to its size, every later file (the interrupted run's, or an earlier resume's) deleted. SummaryWriter's
    purge_step would not do: TensorBoard purges by step across all tags, and MESA's tags count their steps per
    phase, per policy or per task (a purge at explorer 2's step would cut explorer 1's curve)."""
    if not os.path.isdir(folder):  # a checkpoint resumed away from its run folder: the logs start at the checkpoint
        return
    for name in os.listdir(folder):
        if name.startswith("events.out.tfevents."):
            path = os.path.join(folder, name)
            if name not in sizes:
                os.remove(path)
            elif os.path.getsize(path) > sizes[name]:
                os.truncate(path, sizes[name])
# --- end shared ---


def setup(args: Args):
    """(resolved args, env settings, training tasks, test tasks); BadInput (one line) for the first
    impossible setting, or one that would make the run meaningless."""
    args = resolve_args(args, MESA_DEFAULTS)
    if args.collect_steps is None:  # MESA: Table 1's per-task budget, all training tasks together
        check_range(args, ("num_train_tasks",), 1, kind="integer")
        args.collect_steps = COLLECT_STEPS_PER_TASK[args.env_id] * args.num_train_tasks
    check_range(args, ("seed", "task_seed"), 0, 2**31 - 1, kind="integer")
    check_range(args, ("torch_threads", "num_train_tasks", "num_test_tasks", "total_timesteps", "batch_size", "hidden_dim",
                       "train_frequency", "buffer_size", "collect_steps", "meta_train_steps", "num_exploration_policies",
                       "num_clusters", "kmeans_iterations", "max_mstar_size", "eval_frequency", "eval_episodes",
                       "log_frequency"), 1, kind="integer")  # fmt: skip
    check_range(args, ("learning_starts", "checkpoint_every"), 0, kind="integer")
    check_range(args, ("gamma", "relabel_gamma", "exploration_start", "exploration_end"), 0, 1)
    check_range(args, ("tau", "exploration_anneal_fraction"), 0, 1, low_open=True)
    check_range(args, ("learning_rate", "max_grad_norm", "gumbel_temperature", "count_power", "distance_eps"), 0, low_open=True)
    check_range(args, ("logit_penalty", "exploration_noise"), 0)
    check_range(args, ("epsilon_start", "epsilon_end"), 0, 1)
    check_range(args, ("epsilon_anneal_steps",), 1, kind="integer")
    check_range(args, ("reward_threshold",))
    for name, valid in (("eq6_r_hat", ("step", "nearest")), ("global_count_from", ("all", "last-batch"))):
        if getattr(args, name) not in valid:  # (the command line refuses them already; main() called from Python does not)
            raise BadInput(f"--{name.replace('_', '-')} {getattr(args, name)}: must be one of {', '.join(valid)}")
    if args.learning_starts >= args.total_timesteps:  # every test task would end untrained and report that as its score
        raise BadInput(f"--learning-starts {args.learning_starts}: no learning step before the end of meta-testing; "
                       f"must be < --total-timesteps {args.total_timesteps}")
    if args.exploration_policies is None:  # MESA: meta-training's budgets, split evenly (see the docstring)
        if args.collect_steps < args.num_train_tasks:
            raise BadInput(f"--collect-steps {args.collect_steps}: no step for some training tasks; "
                           f"must be >= --num-train-tasks {args.num_train_tasks}")
        E = args.num_exploration_policies
        if args.meta_train_steps // E <= args.learning_starts:
            raise BadInput(f"--meta-train-steps {args.meta_train_steps}: {args.meta_train_steps // E} steps per exploration "
                           f"policy, all random (--learning-starts {args.learning_starts}); must be >= --num-exploration-policies "
                           f"x (--learning-starts + 1) = {E * (args.learning_starts + 1)}")
    settings = env_settings(args)
    train_tasks, test_tasks = draw_tasks(args, settings)
    return args, settings, train_tasks, test_tasks


def load_exploration_policies(args: Args, settings: dict, spaces) -> list[dict]:
    """The actors' state dicts in --exploration-policies, loaded with weights_only=True (a file can
    hold no code) and checked against this run; BadInput (one line) for any other file."""
    path, what = args.exploration_policies, "exploration policies saved by mesa_maddpg.py (exploration_policies.pt in a run folder)"
    saved = load_file(path, "--exploration-policies", what)
    if not (isinstance(saved, dict) and set(saved) == {"env_id", "settings", "spaces", "hidden_dim", "actors"}
            and isinstance(saved["actors"], list) and saved["actors"]):
        raise BadInput(f"--exploration-policies {path}: holds something else; expected {what}")
    if (saved["env_id"], saved["settings"], saved["hidden_dim"]) != (args.env_id, settings, args.hidden_dim):
        raise BadInput(f"--exploration-policies {path}: holds policies of {saved['env_id']} {saved['settings']}, hidden "
                       f"{saved['hidden_dim']}; this run is {args.env_id} {settings}, hidden {args.hidden_dim}")
    n, obs_dim, act_dim, _, _, _ = spaces
    with torch.device("meta"):  # shapes only: no memory, no random numbers drawn
        nets = 1 if args.share_policy else n  # a shared-policy run's actors are one net
        expected = {name: p.shape for name, p in StackedGRUNet(nets, obs_dim, args.hidden_dim, act_dim).state_dict().items()}
    for e, actor in enumerate(saved["actors"]):
        tensors = isinstance(actor, dict) and all(isinstance(value, torch.Tensor) for value in actor.values())
        if not (tensors and {name: value.shape for name, value in actor.items()} == expected
                and all(value.isfinite().all() for value in actor.values())):
            raise BadInput(f"--exploration-policies {path}: actor {e} is not a finite {n}-agent actor of this env "
                           f"(hidden {args.hidden_dim}, {'one shared net' if args.share_policy else 'one net per agent'}); "
                           f"expected {what}")
    return saved["actors"]


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(args: Args) -> dict:
    args, settings, train_tasks, test_tasks = setup(args)
    torch.set_num_threads(args.torch_threads)  # before any torch work (see --torch-threads)
    keep_freed_memory()  # glibc keeps freed blocks up to 32 MiB for reuse (Linux)
    resume = load_checkpoint(args, SCRIPT) if args.resume else None  # BadInput for a missing, foreign or mismatched one
    train_envs = [make_env(args.env_id, task, **settings) for task in train_tasks]
    spaces = env_spaces(train_envs[0])
    n, obs_dim, act_dim, discrete, _, _ = spaces
    exploration_actors = []  # MESA: the E actors' state dicts, trained below or loaded
    if args.exploration_policies is not None:  # MESA: meta-test only
        exploration_actors = load_exploration_policies(args, settings, spaces)
    T = train_envs[0].max_steps
    scale = report_scale(args.env_id, T)

    from torch.utils.tensorboard import SummaryWriter  # lazily: tests that only import need no tensorboard

    run_name = resume["run_name"] if resume else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    if resume:  # what the interrupted run logged after its checkpoint is dropped, and logged again below
        restore_event_files(f"runs/{run_name}", resume["event_files"])
    writer = SummaryWriter(f"runs/{run_name}")
    write_json({"script": SCRIPT, "settings": settings_of(args)}, f"runs/{run_name}/settings.json")
    if not resume:  # (a resumed run's first event file holds them)
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
        writer.add_text("tasks", f"train: {train_tasks!r}\n\ntest: {test_tasks!r}")
    policies_path = args.exploration_policies or f"runs/{run_name}/exploration_policies.pt"

    # seeding: one block; env resets are seeded with seed and the episode index below
    rng, sample_generator = seed_everything(args.seed, args.torch_deterministic)

    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    episode = 0  # counts every episode of every phase: the env reset seeds
    warmup_policy = random_policy(spaces, rng)
    progress = Progress()

    # what the phases carry forward; a resumed run takes it from its checkpoint and skips the phases before it
    mstar_features, mstar_rewards = [], []  # M*: each collected episode's pairs, then all of them, [M, D] and [M]
    centroids, global_counts = None, None  # the hash phi [C, D] and N_hat [C], built on M*
    meta_train_stats = {"exploration_rewards": []}  # MESA: Eq. 6 return of each policy's last batch, |M*|, clusters covered
    test_returns, test_actors = [], []  # final learners' actors: for analysis (benchmarks/mesa_coverage.py)
    total_steps, next_checkpoint = 0, args.checkpoint_every  # env steps of all phases: the checkpoints' clock
    checkpoint_path = f"runs/{run_name}/checkpoint.pt"
    # RESUME: each phase loop starts at index 0, or at the checkpoint's (phase, index); phases before it are skipped
    start = resume["at"] if resume else ("collect", 0)
    if resume:
        carried = resume["carried"]
        (mstar_features, mstar_rewards), centroids = carried["mstar"], carried["centroids"]
        global_counts, exploration_actors = carried["global_counts"], carried["exploration_actors"]
        meta_train_stats, test_returns, test_actors = carried["meta_train_stats"], carried["test_returns"], carried["test_actors"]
        total_steps, next_checkpoint = carried["total_steps"], carried["next_checkpoint"]

    def training_state(step: int, loop: dict | None) -> dict:
        """Everything that decides the rest of the run, between two episodes of a phase loop (`loop`: its counters):
        a checkpoint for --resume; without `loop` (a non-finite stop) one for inspection only."""
        writer.flush()  # the event files then end on a whole record: a resume cuts them back to these sizes
        mstar = [mstar_features, mstar_rewards]
        if isinstance(mstar_features, list):  # collecting: each list as one tensor (30k small tensors save slowly)
            mstar = [[torch.cat(pairs)] if pairs else [] for pairs in mstar]
        return {"script": SCRIPT, "settings": settings_of(args), "run_name": run_name, "resumable": loop is not None,
                "phase": phase, "at": at, "step": step, **learner_state(learner, rb, rng, sample_generator), "loop": loop,
                "carried": {"mstar": mstar, "centroids": centroids, "global_counts": global_counts,
                            "exploration_actors": exploration_actors, "meta_train_stats": meta_train_stats,
                            "test_returns": test_returns, "test_actors": test_actors, "total_steps": total_steps,
                            "next_checkpoint": next_checkpoint},
                "event_files": event_file_sizes(f"runs/{run_name}")}

    def stop(error: Exception, step: int, loop: dict | None = None):
        """End the run between two episodes: Ctrl-C with a resumable checkpoint, a non-finite value with one for
        inspection; the logs closed."""
        save_file(training_state(step, loop), checkpoint_path)
        progress.close()
        writer.close()
        raise type(error)(f"{error}; checkpoint in {checkpoint_path}")

    def check_finite(values: dict, step: int):
        """stop() with NonFinite naming each of {name: float} that is NaN or infinite."""
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:
            stop(NonFinite(f"{', '.join(bad)} not finite at step {step} of {phase}"), step)

    def between_episodes(step: int, loop: dict):
        """The end of a phase loop's iteration (`loop`: the counters a resumed run restores): the checkpoint every
        checkpoint_every env steps of the run, atomically (a kill -9 while writing leaves the previous one whole),
        and the stop a first Ctrl-C asked for."""
        nonlocal next_checkpoint
        if args.checkpoint_every and total_steps >= next_checkpoint:
            next_checkpoint += args.checkpoint_every * ((total_steps - next_checkpoint) // args.checkpoint_every + 1)
            save_file(training_state(step, loop), checkpoint_path)
        if STOP_REQUESTED[0]:
            stop(Interrupted(f"at step {step} of {phase}"), step, loop)

    if args.exploration_policies is None and start[0] != "test":
        # ================= META-TRAINING (Algorithm 1) =================
        # HIGH-REWARD DATASET M* (5.1.1; Algorithm 1 lines 2-6): a fresh MADDPG per training task
        steps_per_task = args.collect_steps // args.num_train_tasks
        for i in range(start[1] if start[0] == "collect" else len(train_envs), len(train_envs)):
            env = train_envs[i]
            learner = MADDPG(n, obs_dim, act_dim, discrete, args, device)
            rb = TrajectoryBuffer(args.buffer_size, n, T, obs_dim, act_dim, device)
            explore_policy = learner_policy(learner, "explore", device)
            task_step, next_train = 0, args.learning_starts
            phase, at = f"collect task {i + 1}/{len(train_envs)}", ("collect", i)
            if resume and resume["at"] == at:  # RESUME: this task as the checkpoint left it
                restore_learner_state(resume, learner, rb, rng, sample_generator)
                task_step, next_train, episode = (resume["loop"][k] for k in ("step", "next_train", "episode"))
            progress.phase(phase, steps_per_task, task_step)
            while task_step < steps_per_task:
                # COLLECT
                learner.epsilon = greedy_epsilon(task_step, args)  # rMADDPG's epsilon-greedy (0: off)
                policy = warmup_policy if task_step < args.learning_starts else explore_policy
                ep = run_episode(env, policy, args.seed * 1_000_003 + episode, spaces)
                check_finite({"actions": ep["return"]}, task_step)  # the return is NaN iff an action was
                rb.add(ep)
                episode += 1
                steps = int(ep["mask"].sum())
                # M*: valuable pairs and, by Eq. 5, the pairs that lead to them
                pairs, r_hat = high_reward_pairs(state_action_features(ep["states"], ep["actions"]),
                                                 torch.as_tensor(ep["rewards"][:steps]), args.reward_threshold,
                                                 args.relabel_gamma)
                mstar_features.append(pairs)
                mstar_rewards.append(r_hat)
                # CRITIC + ACTOR
                task_step, total_steps = task_step + steps, total_steps + steps
                _, next_train = train_steps(learner, rb, task_step, next_train, args, sample_generator)
                progress.update(task_step)
                # CHECKPOINT, Ctrl-C
                between_episodes(task_step, {"step": task_step, "episode": episode, "next_train": next_train})
            collect_return = evaluate(env, learner, 1, 10**9 + episode, spaces, device)
            check_finite({"greedy actions": collect_return}, task_step)
            writer.add_scalar("charts/collect_return", collect_return * scale, i)
        if start[0] == "collect":  # (a run resumed in the next phase has M* and the hash from its checkpoint)
            mstar_features, mstar_rewards = torch.cat(mstar_features), torch.cat(mstar_rewards)  # [M, D], [M]
            if mstar_features.shape[0] == 0:  # then one pair of reward 0 stands in: Eq. 6 pays nothing
                print("warning: M* is empty (no training episode reached R*): raise --collect-steps", file=sys.stderr)
                mstar_features, mstar_rewards = torch.zeros(1, mstar_features.shape[1]), torch.zeros(1)
            # one copy per distinct pair, with its largest r_hat (paper silent)
            mstar_features, inverse = torch.unique(mstar_features, dim=0, return_inverse=True)
            mstar_rewards = torch.zeros(mstar_features.shape[0]).scatter_reduce(0, inverse, mstar_rewards, "amax")
            if mstar_features.shape[0] > args.max_mstar_size:
                keep = torch.randperm(mstar_features.shape[0], generator=sample_generator)[: args.max_mstar_size]
                mstar_features, mstar_rewards = mstar_features[keep], mstar_rewards[keep]
            writer.add_scalar("charts/mstar_size", mstar_features.shape[0], 0)

            # HASH phi (5.3): KMeans over M*
            centroids = kmeans(mstar_features, args.num_clusters, args.kmeans_iterations, sample_generator)  # [C, D]
            global_counts = torch.zeros(centroids.shape[0])  # N_hat [C]

        # EXPLORATION POLICIES (5.1.2; Algorithm 1 lines 7-20), trained one after another
        steps_per_policy = args.meta_train_steps // args.num_exploration_policies
        for e in range(start[1] if start[0] == "explore" else 0, args.num_exploration_policies):
            learner = MADDPG(n, obs_dim, act_dim, discrete, args, device)
            rb = TrajectoryBuffer(args.buffer_size, n, T, obs_dim, act_dim, device)
            explore_policy = learner_policy(learner, "explore", device)
            last_batch, last_rewards = [], []  # clusters visited and Eq. 6 returns of the latest batch_size trajectories
            policy_visits = torch.zeros_like(global_counts)  # [C]: cluster visits of every trajectory of this policy (D)
            policy_step, next_train, next_log = 0, args.learning_starts, 0
            losses = {}
            phase, at = f"explorer {e + 1}/{args.num_exploration_policies}", ("explore", e)
            if resume and resume["at"] == at:  # RESUME: this policy as the checkpoint left it
                restore_learner_state(resume, learner, rb, rng, sample_generator)
                policy_step, next_train, next_log, losses, last_batch, last_rewards, policy_visits, episode = (
                    resume["loop"][k] for k in ("step", "next_train", "next_log", "losses", "last_batch", "last_rewards",
                                                "policy_visits", "episode"))
            progress.phase(phase, steps_per_policy, policy_step)
            while policy_step < steps_per_policy:
                # COLLECT on a uniformly drawn training task
                env = train_envs[rng.integers(len(train_envs))]
                learner.epsilon = greedy_epsilon(policy_step, args)  # rMADDPG's epsilon-greedy (0: off)
                policy = warmup_policy if policy_step < args.learning_starts else explore_policy
                ep = run_episode(env, policy, args.seed * 1_000_003 + episode, spaces)
                check_finite({"actions": ep["return"]}, policy_step)  # the return is NaN iff an action was
                episode += 1
                steps = int(ep["mask"].sum())

                # EXPLORATION REWARD (Eq. 6) replaces the task reward
                features = state_action_features(ep["states"], ep["actions"])  # [steps, D]
                clusters = hash_pairs(features, centroids)  # [steps]
                counts = trajectory_pseudo_counts(clusters, global_counts)  # [steps]
                distance, nearest = nearest_in_mstar(features, mstar_features)  # [steps], [steps]
                if args.eq6_r_hat == "step":  # r_hat_t: Eq. 5 on this rollout's own (training-task) rewards
                    r_hat = densified_rewards(torch.as_tensor(ep["rewards"][:steps]), args.reward_threshold,
                                              args.relabel_gamma)  # [steps]
                else:  # "nearest": the r_hat M* holds for the nearest element d*
                    r_hat = mstar_rewards[nearest]  # [steps]
                reward = torch.zeros(T)
                reward[:steps] = exploration_reward(r_hat, distance, counts, args.distance_eps, args.count_power)
                rb.add(ep, rewards=reward)
                policy_visits = updated_global_counts(policy_visits, [clusters])
                last_batch = (last_batch + [clusters])[-args.batch_size:]
                last_rewards = (last_rewards + [float(reward.sum())])[-args.batch_size:]

                # CRITIC + ACTOR
                policy_step, total_steps = policy_step + steps, total_steps + steps
                new_losses, next_train = train_steps(learner, rb, policy_step, next_train, args, sample_generator)
                losses = new_losses or losses

                # LOG
                if policy_step >= next_log:
                    logged = {f"losses/{name}_policy{e}": value.item() for name, value in losses.items()}  # host sync, once per log
                    check_finite(logged, policy_step)
                    writer.add_scalar(f"charts/exploration_reward_policy{e}", float(reward.sum()), policy_step)
                    writer.add_scalar(f"charts/task_return_policy{e}", ep["return"] * scale, policy_step)
                    for tag, value in logged.items():
                        writer.add_scalar(tag, value, policy_step)
                    next_log += args.log_frequency
                progress.update(policy_step)

                # CHECKPOINT, Ctrl-C
                between_episodes(policy_step, {"step": policy_step, "episode": episode, "next_train": next_train,
                                               "next_log": next_log, "losses": losses, "last_batch": last_batch,
                                               "last_rewards": last_rewards, "policy_visits": policy_visits})
            # N_hat += the visits of the policy's dataset D (Algorithm 1 line 19), or of its last batch only
            if args.global_count_from == "all":
                global_counts = global_counts + policy_visits
            else:
                global_counts = updated_global_counts(global_counts, last_batch)
            writer.add_scalar("charts/clusters_covered", int((global_counts > 0).sum()), e)
            exploration_actors.append(copy.deepcopy(learner.actor.state_dict()))
            meta_train_stats["exploration_rewards"].append(float(np.mean(last_rewards)))
        meta_train_stats.update(mstar_size=mstar_features.shape[0], clusters_covered=int((global_counts > 0).sum()))
        # plain containers, numbers and tensors only: --exploration-policies loads it with weights_only=True
        save_file({"env_id": args.env_id, "settings": settings, "spaces": spaces[:4], "hidden_dim": args.hidden_dim,
                   "actors": exploration_actors}, policies_path)
    # ================= META-TESTING (Algorithm 2) =================
    # MESA: reseed, so meta-testing is the same run whether the policies were just trained or loaded
    rng, sample_generator = seed_everything(args.seed + 1, args.torch_deterministic)
    warmup_policy, episode = random_policy(spaces, rng), 0
    explorers = []
    for state_dict in exploration_actors:
        explorer = MADDPG(n, obs_dim, act_dim, discrete, args, device)
        explorer.actor.load_state_dict(state_dict)
        explorers.append(learner_policy(explorer, "explore", device))
    for j in range(start[1] if start[0] == "test" else 0, len(test_tasks)):
        task = test_tasks[j]
        env, eval_env = make_env(args.env_id, task, **settings), make_env(args.env_id, task, **settings)
        learner = MADDPG(n, obs_dim, act_dim, discrete, args, device)
        rb = TrajectoryBuffer(args.buffer_size, n, T, obs_dim, act_dim, device)
        explore_policy = learner_policy(learner, "explore", device)
        global_step, next_train, next_eval, next_log = 0, args.learning_starts, 0, 0
        losses = {}
        phase, at = f"test task {j + 1}/{len(test_tasks)}", ("test", j)
        if resume and resume["at"] == at:  # RESUME: this task as the checkpoint left it
            restore_learner_state(resume, learner, rb, rng, sample_generator)
            global_step, next_train, next_eval, next_log, losses, episode = (resume["loop"][k] for k in (
                "step", "next_train", "next_eval", "next_log", "losses", "episode"))
        start_time, learning_start_step = None, None  # charts/SPS only: a resumed run starts its clock again
        progress.phase(phase, args.total_timesteps, global_step)
        while global_step < args.total_timesteps:
            # COLLECT: with probability eps(t) a uniformly chosen exploration policy plays the episode
            learner.epsilon = greedy_epsilon(global_step, args)  # rMADDPG's epsilon-greedy (0: off)
            eps = exploration_probability(global_step, args.total_timesteps, args.exploration_start,
                                          args.exploration_end, args.exploration_anneal_fraction)
            if rng.random() < eps:
                policy = explorers[rng.integers(len(explorers))]
            else:
                policy = warmup_policy if global_step < args.learning_starts else explore_policy
            ep = run_episode(env, policy, args.seed * 1_000_003 + episode, spaces)
            check_finite({"actions": ep["return"]}, global_step)  # the return is NaN iff an action was
            rb.add(ep)
            steps = int(ep["mask"].sum())
            global_step, episode, total_steps = global_step + steps, episode + 1, total_steps + steps
            writer.add_scalar(f"charts/episodic_return_task{j}", ep["return"] * scale, global_step)

            # CRITIC + ACTOR
            if start_time is None and global_step >= args.learning_starts:
                start_time, learning_start_step = time.time(), global_step
            new_losses, next_train = train_steps(learner, rb, global_step, next_train, args, sample_generator)
            losses = new_losses or losses

            # EVAL: greedy policy on the test task
            eval_return = None
            if global_step >= next_eval:
                eval_return = evaluate(eval_env, learner, args.eval_episodes, 10**9 + episode, spaces, device) * scale
                check_finite({"greedy actions": eval_return}, global_step)
                writer.add_scalar(f"eval/episodic_return_task{j}", eval_return, global_step)
                next_eval += args.eval_frequency

            # LOG
            if global_step >= next_log and losses:
                logged = {f"losses/{name}_task{j}": value.item() for name, value in losses.items()}  # host sync, once per log
                check_finite(logged, global_step)
                writer.add_scalar(f"charts/exploration_probability_task{j}", eps, global_step)
                for tag, value in logged.items():
                    writer.add_scalar(tag, value, global_step)
                sps = int((global_step - learning_start_step) / max(time.time() - start_time, 1e-9))
                writer.add_scalar("charts/SPS", sps, global_step)
                next_log += args.log_frequency
            progress.update(global_step, eval_return)

            # CHECKPOINT, Ctrl-C
            between_episodes(global_step, {"step": global_step, "episode": episode, "next_train": next_train,
                                           "next_eval": next_eval, "next_log": next_log, "losses": losses})
        test_returns.append(evaluate(eval_env, learner, args.eval_episodes, 10**9 + episode, spaces, device) * scale)
        check_finite({"greedy actions": test_returns[-1]}, global_step)
        test_actors.append(copy.deepcopy(learner.actor.state_dict()))
        writer.add_scalar("eval/test_return_per_task", test_returns[-1], j)

    progress.close()
    test_return = float(np.mean(test_returns))
    writer.add_scalar("eval/test_return", test_return, 0)
    writer.close()
    result = {"test_return": test_return, "test_returns": test_returns, "run_name": run_name}
    write_json(result, f"runs/{run_name}/result.json")  # the run is finished: --resume no longer picks it
    print(f"test_return={test_return:.4f}")
    return {**result, "exploration_policies": policies_path, "test_tasks": test_tasks, "test_actors": test_actors,
            **meta_train_stats}


if __name__ == "__main__":
    cli(main, Args)
