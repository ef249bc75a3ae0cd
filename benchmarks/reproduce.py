"""Reproduce a table of the CE or the MESA paper: every run of it, resumable, on this machine or a SLURM cluster.

One command per table, e.g.

    python benchmarks/reproduce.py ce-table1        # CE paper, Table 1: SAC, Replica, A2C, DIAYN, RND, DiCE, SUNRISE, CE; DMC15, 5 seeds
    python benchmarks/reproduce.py ce-table1 --rows sac replica ce --tasks pendulum-swingup cartpole-swingup \
        --seeds 1 2 --total-timesteps 3000 --learning-starts 1000 --eval-every 1000     # a quick look
    python benchmarks/reproduce.py mesa-table2 --tasks climb-one-step climb-multi-stage   # MESA's climb columns
    python benchmarks/reproduce.py ce-table1 --launcher slurm --slurm-partition gpu      # the same runs as SLURM jobs

Tables: ce-table1, ce-table2, ce-table6 .. ce-table9 (the CE paper's Table 1, Table 2 and the ablations of
Appendix D), ce-fig4 (pixels, DrQ backbone; refused while ce_drq.py or baselines/drq.py is missing),
mesa-table2 (the MESA paper's Appendix Table 2, with the README's diagnostics of the climb games: a
"MADDPG, greedy acting" row and `--ceiling`). `--help` lists every option.

What it does. Each run is the script's own command line (what the README's tables list) in a process of its
own, with the working directory `<out>/<row>/<task>/seed<k>/` (so the run's `runs/` folder lives there) and its
stdout and stderr appended to `log.txt` in that folder, always with `--checkpoint-every` where the script has
it. Running the same command again skips every run whose folder has a result, resumes with `--resume` every
run that left a checkpoint, and starts the rest; a folder whose finished run or checkpoint comes from a
different command (other budgets, other `--extra`) is an error, never silently reused. A failed run
(non-zero exit) is reported with the last lines of its log and does not stop the others; the sweep then
exits 1. Ctrl-C asks every run to checkpoint and stop (one SIGINT each), then exits 130; the same command
resumes. A row whose script does not exist yet is left out with a note.

The report (`<out>/report.md`, after a sweep or with `--report-only`): for every cell our mean (std) over
seeds beside the paper's mean (std) and the number of seeds behind ours; for the CE tables the paper's
aggregate (Fig. 3; Agarwal et al. 2021), the interquartile mean over tasks x seeds with a 95% stratified
bootstrap confidence interval (rliable), and PNG plots: learning curves per task (from each run's
TensorBoard `eval/return`) and the IQM bars. The paper's numbers live in one place, `PAPER` below.
Expect: at the paper's budgets, our cells within about a std of the paper's; an example from a quick
sweep (minutes of CPU, so far from the paper's numbers) is benchmarks/reports/example/report.md.

Scores. CE scripts: `eval_return`, the mean of the last 10 evaluations (Appendix D.1). MESA scripts:
`test_return`, the final greedy return averaged over the run's test tasks (climb games: per timestep).
A cell's std is numpy's default (ddof = 0) over seeds; the papers do not say which they use.

Decisions (ours, where the papers are silent): see `TABLES` (rows, tasks and seeds of each table), the
MESA seed scheme (seed s draws its tasks with task seed 100 + s, as the README's measured climb table),
quick-look budgets scaled by a row's own ratio to the table's (A2C: 10x, C.1), and `--checkpoint-every`
(50k env steps by default: a checkpoint holds the replay buffer, about 0.1-0.6 GB for the state tasks).
"""

import ast
import contextlib
import ctypes
import datetime
import json
import logging
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import tyro
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]  # the repository: scripts are named relative to it

# ---------------------------------------------------------------------------------------------
# The papers' numbers: the one place they are typed (mean, std), checked against the paper text
# (shared/papers/*.txt) value by value. {table: {row as the paper names it: {task: (mean, std)}}}.
# ---------------------------------------------------------------------------------------------
DMC15_PAPER_ORDER = ("acrobot-swingup", "cheetah-run", "hopper-hop", "hopper-stand", "humanoid-run", "humanoid-stand",
                     "humanoid-walk", "finger-turn_hard", "pendulum-swingup", "quadruped-run", "quadruped-walk",
                     "reacher-hard", "walker-run", "fish-swim", "swimmer-swimmer6")  # Table 1's row order  # fmt: skip
ABLATION_TASKS = ("fish-swim", "hopper-hop", "humanoid-walk", "pendulum-swingup")  # Tables 6-9
TABLE2_TASKS = ("acrobot-swingup", "cheetah-run", "hopper-hop", "hopper-stand", "humanoid-stand", "humanoid-walk",
                "reacher-hard")  # fmt: skip
MESA_COLUMNS_ORDER = ("climb-one-step", "climb-multi-stage", "mpe-2a5l", "mpe-2a6l", "mpe-3a5l", "mpe-3a6l", "swimmer")


def _by_task(rows: tuple[str, ...], cells: dict[str, tuple]) -> dict[str, dict[str, tuple[float, float]]]:
    """A table typed as the paper prints it, a line per task and a column per row -> {row: {task: (mean, std)}}."""
    return {row: {task: values[i] for task, values in cells.items()} for i, row in enumerate(rows)}


def _by_row(tasks: tuple[str, ...], cells: dict[str, tuple]) -> dict[str, dict[str, tuple[float, float]]]:
    """A table typed as the paper prints it, a line per row and a column per task -> {row: {task: (mean, std)}}."""
    return {row: dict(zip(tasks, values, strict=True)) for row, values in cells.items()}


PAPER = {
    # CE paper, Table 1 "Average return on DMC15" (1e6 env steps; A2C 1e7, DIAYN 2e6). As printed, DIAYN and DiCE
    # share fish-swim 304.2 (116.4) (a copy in the paper, we think; typed as printed).
    "ce-table1": _by_task(("SAC", "Replica", "A2C", "DIAYN", "RND", "DiCE", "SUNRISE", "CE"), {
        "acrobot-swingup": ((9.9, 4.8), (22.8, 17.6), (39.2, 4.7), (22.3, 17.4), (11.3, 5.9), (15.2, 11.8), (5.7, 1.3), (54.6, 30.3)),
        "cheetah-run": ((847.3, 17.9), (869.2, 19.8), (271.4, 58.5), (820.2, 39.2), (857.4, 25.1), (868.8, 8.7), (810.9, 28.5), (877.8, 4.1)),
        "hopper-hop": ((148.2, 49.5), (164.6, 93.3), (20.4, 26.3), (182.8, 55.0), (164.7, 34.4), (167.5, 62.6), (188.0, 78.1), (306.8, 20.6)),
        "hopper-stand": ((784.7, 242.9), (825.2, 205.5), (69.7, 79.5), (638.3, 237.9), (809.7, 122.1), (581.6, 274.3), (733.0, 196.3), (933.3, 7.8)),
        "humanoid-run": ((147.5, 15.8), (134.2, 27.9), (0.9, 0.1), (125.8, 23.6), (110.6, 55.0), (141.8, 24.0), (136.4, 33.4), (167.3, 6.4)),
        "humanoid-stand": ((429.6, 243.1), (844.2, 12.4), (5.3, 0.2), (660.3, 156.9), (744.8, 113.1), (662.2, 109.3), (732.8, 82.9), (836.4, 37.4)),
        "humanoid-walk": ((494.1, 41.3), (561.7, 32.7), (1.5, 0.1), (521.0, 48.6), (463.2, 19.1), (481.3, 42.3), (538.3, 20.6), (574.6, 20.2)),
        "finger-turn_hard": ((826.8, 71.8), (841.8, 47.5), (204.6, 82.6), (809.1, 18.7), (763.1, 87.1), (858.4, 66.5), (812.0, 57.3), (882.6, 21.1)),
        "pendulum-swingup": ((652.1, 298.6), (345.0, 320.8), (50.3, 2.2), (623.5, 284.8), (836.0, 10.1), (831.1, 12.2), (688.3, 115.8), (841.4, 4.3)),
        "quadruped-run": ((838.9, 53.6), (853.4, 54.6), (185.9, 75.0), (851.9, 56.0), (837.9, 50.3), (881.4, 18.4), (841.8, 35.7), (895.3, 25.3)),
        "quadruped-walk": ((940.0, 21.1), (945.6, 7.2), (128.1, 45.1), (919.9, 27.3), (806.5, 200.1), (951.4, 5.1), (835.6, 195.4), (942.3, 22.3)),
        "reacher-hard": ((948.0, 8.4), (963.4, 15.6), (829.5, 76.0), (957.9, 19.2), (954.8, 9.6), (962.2, 17.5), (969.7, 2.5), (956.3, 13.6)),
        "walker-run": ((711.2, 59.5), (767.7, 21.5), (305.7, 162.8), (729.9, 20.5), (759.1, 26.3), (795.6, 3.1), (699.0, 49.8), (799.7, 5.0)),
        "fish-swim": ((205.8, 31.9), (152.4, 30.6), (84.8, 8.9), (304.2, 116.4), (260.2, 69.2), (304.2, 116.4), (196.5, 67.5), (305.2, 15.4)),
        "swimmer-swimmer6": ((282.2, 39.5), (288.5, 44.6), (240.0, 20.6), (332.5, 40.4), (300.4, 36.7), (280.0, 50.4), (290.4, 45.9), (298.6, 47.8)),
    }),
    # CE paper, Table 2 "CE is generally applicable" (rows "RND", "+ Replica", "+ CE (ours)")
    "ce-table2": _by_row(TABLE2_TASKS, {
        "RND": ((11.3, 5.9), (857.4, 25.1), (164.7, 34.4), (809.7, 122.1), (744.8, 113.1), (463.2, 19.1), (954.8, 9.6)),
        "RND+Replica": ((24.7, 14.9), (882.5, 13.1), (227.5, 28.1), (925.4, 14.7), (625.4, 228.0), (522.8, 31.5), (953.1, 26.7)),
        "RND+CE": ((34.5, 24.3), (884.6, 10.6), (267.9, 53.5), (935.3, 8.3), (809.9, 47.9), (558.6, 30.4), (962.1, 8.0)),
    }),
    # CE paper, Table 6 "Ablation of different components"
    "ce-table6": _by_task(("Replica", "CE", "All", "w/o Col-Eval", "w/o Col-Unroll", "w/o Col-Training"), {
        "fish-swim": ((152.4, 30.6), (305.2, 15.4), (330.2, 25.8), (222.8, 54.6), (377.5, 71.0), (207.3, 35.1)),
        "hopper-hop": ((164.6, 93.3), (306.8, 20.6), (343.1, 61.5), (333.7, 62.2), (325.4, 81.4), (162.6, 60.1)),
        "humanoid-walk": ((561.7, 32.7), (574.6, 20.2), (589.3, 17.1), (573.3, 13.4), (558.3, 17.3), (517.8, 68.7)),
        "pendulum-swingup": ((345.0, 320.8), (841.4, 4.3), (843.6, 5.4), (841.8, 3.8), (841.4, 3.2), (661.1, 312.8)),
    }),
    # CE paper, Table 7 "Ablation of agent numbers"
    "ce-table7": _by_row(ABLATION_TASKS, {
        "Replica 2": ((156.9, 45.6), (166.8, 78.7), (509.5, 42.1), (365.1, 263.6)),
        "Replica 4": ((152.4, 30.6), (164.6, 93.3), (561.7, 32.7), (345.0, 320.8)),
        "Replica 8": ((260.6, 68.7), (224.8, 51.3), (438.1, 77.5), (369.0, 351.4)),
        "Replica 16": ((414.3, 58.6), (223.8, 40.3), (567.9, 73.1), (330.1, 328.0)),
        "Replica 32": ((565.8, 65.6), (160.2, 56.7), (578.5, 88.3), (276.6, 327.0)),
        "Replica 64": ((569.5, 89.1), (152.7, 60.1), (432.3, 138.1), (288.9, 279.2)),
        "CE 2": ((324.7, 28.5), (207.2, 129.7), (483.0, 79.2), (837.2, 9.2)),
        "CE 4": ((305.2, 15.4), (306.8, 20.6), (574.6, 20.2), (841.4, 4.3)),
        "CE 8": ((360.1, 68.2), (205.0, 37.6), (523.1, 41.6), (830.2, 14.1)),
        "CE 16": ((458.6, 76.9), (232.4, 60.5), (531.0, 51.7), (825.1, 18.1)),
        "CE 32": ((604.6, 83.5), (226.8, 70.7), (545.2, 67.8), (824.5, 23.5)),
        "CE 64": ((601.6, 103.7), (201.2, 86.2), (518.2, 129.0), (828.4, 26.3)),
    }),
    # CE paper, Table 8 "Ablation of different encoders"
    "ce-table8": _by_task(("Replica", "CE", "Identical", "Random"), {
        "fish-swim": ((152.4, 30.6), (305.2, 15.4), (176.4, 49.4), (190.2, 61.3)),
        "hopper-hop": ((164.6, 93.3), (306.8, 20.6), (147.7, 63.4), (179.7, 63.6)),
        "humanoid-walk": ((561.7, 32.7), (574.6, 20.2), (453.8, 131.4), (537.3, 26.6)),
        "pendulum-swingup": ((345.0, 320.8), (841.4, 4.3), (697.5, 259.5), (514.6, 361.5)),
    }),
    # CE paper, Table 9 "Ablation of KNN" (K = 20 is CE)
    "ce-table9": _by_task(("Replica", "K=5", "K=10", "K=20", "K=30"), {
        "fish-swim": ((152.4, 30.6), (172.8, 79.2), (210.6, 77.4), (305.2, 15.4), (241.8, 49.8)),
        "hopper-hop": ((164.6, 93.3), (165.4, 64.0), (264.7, 95.1), (306.8, 20.6), (256.7, 50.3)),
        "humanoid-walk": ((561.7, 32.7), (539.7, 29.6), (545.0, 26.6), (574.6, 20.2), (577.0, 19.9)),
        "pendulum-swingup": ((345.0, 320.8), (773.8, 135.3), (839.4, 2.8), (841.4, 4.3), (837.1, 5.3)),
    }),
    # CE paper, Fig. 4 (pixels): a figure only, no numbers in the text
    "ce-fig4": {},
    # MESA paper, Appendix B.4 Table 2 "Summary of final performance" (mean +- std; 2A5L = 2 agents, 5 landmarks)
    "mesa-table2": _by_row(MESA_COLUMNS_ORDER, {
        "MESA": ((0.83, 0.20), (0.81, 0.06), (61.32, 8.24), (58.73, 10.16), (51.83, 13.37), (44.71, 15.92), (599.32, 35.93)),
        "MADDPG": ((0.74, 0.25), (0.50, 0.00), (21.09, 23.07), (19.44, 18.41), (5.45, 6.49), (3.16, 5.73), (499.33, 0.52)),
        "MAPPO": ((0.50, 0.00), (0.54, 0.05), (24.42, 2.99), (27.57, 4.86), (10.12, 5.83), (13.52, 2.91), (496.88, 1.98)),
        "MAPPO-RND": ((0.50, 0.00), (0.53, 0.04), (24.05, 2.45), (27.10, 5.67), (17.18, 3.52), (7.30, 2.76), (496.36, 1.76)),
        "QMIX": ((0.50, 0.00), (0.50, 0.00), (0.21, 0.04), (0.48, 0.12), (0.06, 0.02), (0.04, 0.03), (499.97, 0.03)),
        "MAVEN": ((0.50, 0.00), (0.50, 0.00), (0.06, 0.03), (0.13, 0.10), (0.06, 0.05), (0.07, 0.00), (495.41, 2.63)),
        "EMC": ((0.50, 0.00), (0.50, 0.00), (50.49, 17.26), (50.61, 17.41), (36.63, 0.11), (36.47, 0.28), (499.66, 0.20)),
        "Pretrain": ((0.55, 0.00), (0.55, 0.00), (23.26, 2.19), (29.81, 4.97), (17.91, 2.63), (17.72, 5.28), (496.49, 1.33)),
        "CBET": ((0.55, 0.00), (0.55, 0.00), (23.69, 1.01), (28.37, 3.59), (19.85, 5.05), (19.80, 4.36), (497.54, 1.49)),
        "Goal": ((0.55, 0.00), (0.55, 0.00), (31.61, 0.90), (32.14, 0.10), (30.60, 1.03), (30.44, 0.60), (498.13, 0.45)),
    }),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The tables: rows (a script and its flags), tasks (columns), seeds. Adding a row is one `Row(...)` line.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    key: str
    """the `--rows` value and the folder name"""
    name: str
    """the row's name in the paper (the key into PAPER) and in our report"""
    script: Optional[str]
    """path from the repository root; None: a row computed from the task draws, no run"""
    flags: str = ""
    """added to every run of this row"""
    default: bool = True
    """run unless `--rows` says otherwise (False: a diagnostic, run only when named)"""
    per_test_task: bool = False
    """MESA's MADDPG: one run per test task of the seed's draw (`--test-task-index j`), the seed's value their mean"""
    wrapper: Optional[str] = None
    """python code run as `python -c CODE FLAGS` instead of the script (it must end in the script's cli)"""
    budget_scale: int = 1
    """the row's budget in units of the table's (A2C: 10, C.1); --total-timesteps and --eval-every are scaled by it"""
    budget_flags: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """which of the script's flags take a budget option, where not the option's own name (DIAYN: both phases)"""


# The README's "MADDPG, greedy acting" diagnostic: baselines/maddpg.py with "explore" acting as "greedy", i.e. the
# argmax after the random warm-up instead of a Gumbel sample, so it explores only during the warm-up. A patch in
# the run's own process (the script has no such flag), applied before its cli runs.
GREEDY_MADDPG = ("import sys; sys.path.insert(0, {baselines!r}); import maddpg; sample = maddpg.MADDPG.policy_action; "
                 "maddpg.MADDPG.policy_action = lambda self, out, mode: sample(self, out, 'greedy' if mode == 'explore' else mode); "
                 "maddpg.cli(maddpg.main, maddpg.Args)")  # fmt: skip


@dataclass(frozen=True)
class MesaColumn:
    label: str
    """the paper's column name"""
    flags: str
    """the environment's flags, for both scripts"""
    num_test_tasks: int
    """test tasks per seed: the scripts' own default (Appendix Table 1: 5 climb, 15 MPE, 6 Swimmer), passed
    explicitly so that MESA and every MADDPG run of a seed draw the same tasks"""


MESA_COLUMNS = {
    "climb-one-step": MesaColumn("One-step climb game", "--env-id climb-one-step", 5),
    "climb-multi-stage": MesaColumn("Multi-stage climb game", "--env-id climb-multi-stage", 5),
    # Appendix Table 1 reads "15, 18 in 5-agent MPE and 6-agent MPE"; the scripts take 15 for every MPE game
    "mpe-2a5l": MesaColumn("2A5L MPE", "--env-id mpe-climb --n-agents 2 --num-actions 5", 15),
    "mpe-2a6l": MesaColumn("2A6L MPE", "--env-id mpe-climb --n-agents 2 --num-actions 6", 15),
    "mpe-3a5l": MesaColumn("3A5L MPE", "--env-id mpe-climb --n-agents 3 --num-actions 5", 15),
    "mpe-3a6l": MesaColumn("3A6L MPE", "--env-id mpe-climb --n-agents 3 --num-actions 6", 15),
    "swimmer": MesaColumn("MA-MuJoCo Swimmer", "--env-id swimmer-climb", 6),
}
MESA_TASK_SEED_OFFSET = 100  # seed s draws its tasks with task seed 100 + s (tests use task seeds below 100)


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    tasks: tuple[str, ...]
    rows: tuple[Row, ...]
    seeds: tuple[int, ...]
    metric: str  # the score key of a run's result.json and its last stdout line
    note: str = ""
    needs_every_script: bool = False  # refuse the table while any default row's script is missing (else: leave the row out)


def _ce_row(key: str, name: str, flags: str = "", script: str = "ce_sac.py", **kwargs) -> Row:
    return Row(key, name, script, flags, **kwargs)


REPLICA = _ce_row("replica", "Replica", "--no-col-training")
CE = _ce_row("ce", "CE")
TABLES = {t.key: t for t in (
    Table("ce-table1", "CE paper, Table 1: average return on DMC15 (1e6 env steps, 5 seeds)", DMC15_PAPER_ORDER, (
        Row("sac", "SAC", "baselines/sac.py"),
        REPLICA,
        Row("a2c", "A2C", "baselines/a2c.py", budget_scale=10),  # C.1: 1e7 env steps, 10x the others (its default)
        Row("diayn", "DIAYN", "baselines/diayn.py",  # C.1: 1e6 steps of skill pre-training, then 1e6 of fine-tuning
            budget_flags=(("total_timesteps", ("pretrain_timesteps", "finetune_timesteps")),
                          ("learning_starts", ("learning_starts", "finetune_learning_starts")))),
        Row("rnd", "RND", "ce_rnd.py", "--num-agents 1"),
        Row("dice", "DiCE", "baselines/dice.py"),
        Row("sunrise", "SUNRISE", "baselines/sunrise.py"),
        CE,
    ), (1, 2, 3, 4, 5), "eval_return"),
    Table("ce-table2", "CE paper, Table 2: collaborative reward with RND novelty (1e6 env steps, 5 seeds)", TABLE2_TASKS, (
        Row("rnd", "RND", "ce_rnd.py", "--num-agents 1"),
        Row("rnd-replica", "RND+Replica", "ce_rnd.py", "--rnd-mode own"),
        Row("rnd-ce", "RND+CE", "ce_rnd.py", "--rnd-mode shared"),
    ), (1, 2, 3, 4, 5), "eval_return"),
    Table("ce-table6", "CE paper, Table 6: ablation of the three collaborations (Appendix D.2)", ABLATION_TASKS, (
        REPLICA,
        CE,
        _ce_row("all", "All", "--col-unroll --col-eval"),
        _ce_row("wo-col-eval", "w/o Col-Eval", "--col-unroll"),
        _ce_row("wo-col-unroll", "w/o Col-Unroll", "--col-eval"),
        _ce_row("wo-col-training", "w/o Col-Training", "--no-col-training --col-unroll --col-eval"),
    ), (1, 2, 3, 4, 5), "eval_return"),
    Table("ce-table7", "CE paper, Table 7: number of agents N (Appendix D.3; 1e6 env steps of all agents together)",
          ABLATION_TASKS, tuple(
        _ce_row(f"{kind}-{n}", f"{name} {n}", f"--num-agents {n}" + extra)
        for kind, name, extra in (("replica", "Replica", " --no-col-training"), ("ce", "CE", "")) for n in (2, 4, 8, 16, 32, 64)
    ), (1, 2, 3, 4, 5), "eval_return"),
    Table("ce-table8", "CE paper, Table 8: the encoder of the novelty (Appendix D.4)", ABLATION_TASKS, (
        REPLICA,
        CE,
        _ce_row("identical", "Identical", "--encoder identity"),
        _ce_row("random", "Random", "--encoder random"),
    ), (1, 2, 3, 4, 5), "eval_return"),
    Table("ce-table9", "CE paper, Table 9: K of the KNN novelty (Appendix D.5, lambda = 0.2)", ABLATION_TASKS, (
        REPLICA,
        *(_ce_row(f"k{k}", f"K={k}", f"--knn-k {k}") for k in (5, 10, 20, 30)),
    ), (1, 2, 3, 4, 5), "eval_return"),
    Table("ce-fig4", "CE paper, Fig. 4: pixel-based DMC, DrQ backbone, N = 2 (section 5.3)",
          # paper silent: the text names none of Fig. 4's four tasks; these are DrQ's PlaNet six (pick with --tasks)
          ("ball_in_cup-catch", "cartpole-swingup", "cheetah-run", "finger-spin", "reacher-easy", "walker-walk"), (
        Row("drq", "DrQ", "baselines/drq.py"),
        Row("replica-drq", "Replica-DrQ", "ce_drq.py", "--no-col-training"),
        Row("ce", "CE", "ce_drq.py"),
    ), (1, 2, 3, 4, 5), "eval_return", note="Fig. 4 gives curves only: no paper numbers to compare with. The paper also "
        "shows pixel RND and SUNRISE, which have no script here.", needs_every_script=True),
    Table("mesa-table2", "MESA paper, Appendix Table 2: final performance on unseen test tasks", MESA_COLUMNS_ORDER, (
        Row("mesa", "MESA", "mesa_maddpg.py"),
        Row("maddpg", "MADDPG", "baselines/maddpg.py", "--exp-name maddpg", per_test_task=True),
        Row("maddpg-greedy", "MADDPG, greedy acting", "baselines/maddpg.py", "--exp-name maddpg-greedy", default=False,
            per_test_task=True, wrapper=GREEDY_MADDPG),
        # one actor for all agents (marlbenchmark/off-policy rMADDPG's default, `--share-policy`): with the climb
        # games' identical observations every greedy joint action is diagonal, (x, x)
        Row("mesa-shared", "MESA, shared policy", "mesa_maddpg.py", "--share-policy", default=False),
        Row("maddpg-shared", "MADDPG, shared policy", "baselines/maddpg.py", "--exp-name maddpg-shared --share-policy",
            default=False, per_test_task=True),
        Row("k1-only", "k = 1 stages solved, k = 2 not (task draws, no training)", None),
    ), (1, 2, 3), "test_return",  # B.2: "3 runs with different seeds, each consisting of a different set of meta-testing tasks"
          note="Seed s draws its training and test tasks with task seed {offset} + s; MESA meta-trains once "
               "per seed and meta-tests every test task of the draw, MADDPG learns each of them from scratch (a run "
               "per task); a seed's number is the mean final test return over its test tasks (climb games: averaged "
               "over timesteps, the paper's convention; MPE and Swimmer: summed)."),
)}  # fmt: skip
CE_KIND = "eval_return"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
@dataclass
class Args:
    table: tyro.conf.Positional[str] = ""
    """the table to reproduce: ce-table1, ce-table2, ce-table6, ce-table7, ce-table8, ce-table9, ce-fig4, mesa-table2"""
    tasks: tuple[str, ...] = ()
    """tasks (columns) to run (default: the paper's for the table); CE tables also take any DMC `domain-task` or gymnasium id"""
    rows: tuple[str, ...] = ()
    """rows to run, by key (default: the table's rows, diagnostics left out); an unknown one lists the valid ones"""
    seeds: tuple[int, ...] = ()
    """seeds (default: the paper's count, 1..5 for the CE tables, 1..3 for MESA's, whose Appendix B.2 uses 3 runs)"""
    out: str = ""
    """folder of the runs and the report (default: reproduce/<table>, relative to the working directory)"""

    # budgets for a quick look (0: the script's default, i.e. the paper's)
    total_timesteps: int = 0
    """env steps of every run (CE scripts: of all agents together; MESA scripts: of meta-testing)"""
    learning_starts: int = 0
    """env steps of random actions before learning, every run"""
    eval_every: int = 0
    """env steps between evaluations (CE: --eval-every; MADDPG/MESA: --eval-frequency)"""
    num_test_tasks: int = 0
    """mesa-table2: test tasks per seed (0: the paper's per column, 5 climb, 15 MPE, 6 Swimmer)"""
    task_seed_offset: int = MESA_TASK_SEED_OFFSET
    """mesa-table2: seed s draws its training and test tasks with task seed offset + s"""
    extra: tyro.conf.UseAppendAction[tuple[str, ...]] = ()
    """flags added to every run, e.g. --extra "--batch-size 64"; "ROW: FLAGS" adds them to one row's runs only
    (e.g. --extra "mesa: --meta-train-steps 2000"); repeatable"""
    checkpoint_every: int = 50_000
    """env steps between a run's checkpoints, passed where the script has --checkpoint-every (0: none)"""

    # how
    jobs: int = 0
    """local launcher: runs at a time (0: one per CPU core; each run uses one torch thread)"""
    launcher: str = "local"
    """local (a pool of processes here) or slurm (one submitit job per run)"""
    report_only: bool = False
    """rebuild <out>/report.md from whatever runs exist; start nothing"""
    dry_run: bool = False
    """print the command line of every run that would start or resume; start nothing"""
    ceiling: bool = False
    """mesa-table2: print only the multi-stage climb game's ceiling from the task draws (no training), as the README quotes"""
    bootstrap_reps: int = 2000
    """bootstrap resamples of the IQM's confidence interval (rliable's default is 50000: slow, and no different at 3 digits)"""

    # --launcher slurm (submitit)
    slurm_partition: str = ""
    """partition (default: the cluster's)"""
    slurm_account: str = ""
    """account to charge (default: yours)"""
    slurm_time_min: int = 24 * 60
    """time limit per job in minutes; a run that reaches it is requeued and resumes from its checkpoint"""
    slurm_gpus_per_run: int = 1
    """GPUs per run (0: CPU only; the scripts use a GPU when they see one)"""
    slurm_cpus_per_run: int = 2
    """CPUs per run"""
    slurm_mem_gb: int = 16
    """memory per run in GB (a 1e6-transition buffer of humanoid is about 0.6 GB; CE N = 64 more)"""
    slurm_array_parallelism: int = 64
    """jobs of the array running at a time"""
    slurm_max_requeues: int = 10
    """requeues after a timeout before a run is given up (preemptions do not count)"""
    slurm_setup: tyro.conf.UseAppendAction[tuple[str, ...]] = ()
    """shell lines run in each job before python, e.g. --slurm-setup "module load cuda"; repeatable"""
    slurm_cluster: str = "slurm"
    """submitit's cluster: slurm, or local (submitit's LocalExecutor: the same jobs as processes here, for testing)"""
    wait: bool = False
    """slurm launcher: wait for every job, then write the report (default: submit, print the job ids, return)"""


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
# (The block above is ce_sac.py's, text for text; tests/test_reproduce.py holds it equal. This driver never
# calls save_file or load_file, so it never imports torch, which they name.)


# ---------------------------------------------------------------------------------------------
# What to run: the selection, each run's folder and command line
# ---------------------------------------------------------------------------------------------
@dataclass
class Plan:
    table: Table
    rows: list[Row]
    tasks: list[str]
    seeds: list[int]
    out: Path
    extra: dict[str, list[str]]  # row key ("" = every row) -> flags
    notes: list[str] = field(default_factory=list)  # said once, before anything runs (rows left out, ...)


@dataclass(frozen=True)
class Run:
    row: Row
    task: str
    seed: int
    part: Optional[int]  # the test task of a per-test-task row, else None
    folder: Path
    flags: tuple[str, ...]  # after the script (or the wrapper's code), without --checkpoint-every / --resume

    @property
    def label(self) -> str:
        return f"{self.row.key} {self.task} seed{self.seed}" + ("" if self.part is None else f" test{self.part}")


_FIELDS: dict[str, set[str]] = {}


def script_fields(script: str) -> set[str]:
    """The field names of the script's `Args` dataclass, read from its source (nothing imported or run): what
    the script accepts, e.g. whether it has `--checkpoint-every` yet."""
    if script not in _FIELDS:
        tree = ast.parse((ROOT / script).read_text(), filename=script)
        cls = next((node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Args"), None)
        _FIELDS[script] = {node.target.id for node in (cls.body if cls else []) if isinstance(node, ast.AnnAssign)}
    return _FIELDS[script]


def flag_name(token: str) -> str:
    """`--batch-size=64` -> batch_size; `--no-col-training` -> col_training (tyro's negated booleans)."""
    name = token[2:].split("=", 1)[0].replace("-", "_")
    return name[3:] if name.startswith("no_") else name


DRIVER_FLAGS = {"seed", "env_id", "resume", "checkpoint_every", "task_seed", "test_task_index", "num_test_tasks",
                "n_agents", "num_actions"}  # set per run by this driver; --extra may not set them  # fmt: skip


def known_task(table: Table, task: str) -> bool:
    """A task the table can run: one of its own, or (CE tables) any environment envs/dmc.py builds."""
    if task in table.tasks:
        return True
    if table.key == "mesa-table2":
        return False
    sys.path.insert(0, str(ROOT))
    from envs.dmc import make_env  # lazily: building DMC environments imports MuJoCo

    try:
        make_env(task, 0).close()
    except ValueError:
        return False
    return True


def validate(args: Args) -> Plan:
    """BadInput (one line naming what is valid) for an unknown table, row, task, launcher or an impossible
    setting; the selection otherwise."""
    if args.table not in TABLES:
        raise BadInput(f"TABLE {args.table or '(missing)'}: must be one of {', '.join(TABLES)}")
    table = TABLES[args.table]
    for name, valid in (("launcher", ("local", "slurm")), ("slurm_cluster", ("slurm", "local"))):
        if getattr(args, name) not in valid:
            raise BadInput(f"--{name.replace('_', '-')} {getattr(args, name)}: must be one of {', '.join(valid)}")
    check_range(args, ("total_timesteps", "learning_starts", "eval_every", "num_test_tasks", "checkpoint_every", "jobs"),
                 0, kind="integer")
    check_range(args, ("bootstrap_reps", "slurm_time_min", "slurm_cpus_per_run", "slurm_mem_gb", "slurm_array_parallelism"),
                 1, kind="integer")  # fmt: skip
    check_range(args, ("slurm_gpus_per_run", "slurm_max_requeues"), 0, kind="integer")
    if args.ceiling and table.key != "mesa-table2":
        raise BadInput(f"--ceiling: only for mesa-table2 (the multi-stage climb game's ceiling), not {table.key}")
    if args.num_test_tasks and table.key != "mesa-table2":
        raise BadInput(f"--num-test-tasks {args.num_test_tasks}: only for mesa-table2")
    check_range(args, ("task_seed_offset",), 0, 2**31 - 1000, kind="integer")
    if args.task_seed_offset != MESA_TASK_SEED_OFFSET and table.key != "mesa-table2":
        raise BadInput(f"--task-seed-offset {args.task_seed_offset}: only for mesa-table2")

    by_key = {row.key: row for row in table.rows}
    unknown = [key for key in args.rows if key not in by_key]
    if unknown:
        raise BadInput(f"--rows {unknown[0]}: not a row of {table.key}; valid: {', '.join(by_key)}")
    rows = [by_key[key] for key in dict.fromkeys(args.rows)] if args.rows else [row for row in table.rows if row.default]
    notes = []
    missing = sorted({row.script for row in rows if row.script and not (ROOT / row.script).is_file()})
    if missing and (args.rows or table.needs_every_script or all(row.script in missing for row in rows if row.script)):
        raise BadInput(f"{table.key}: {' and '.join(missing)} {'does' if len(missing) == 1 else 'do'} not exist yet; "
                       f"the table is listed but cannot run" + ("" if not args.rows else f" (--rows {' '.join(args.rows)})"))
    for row in rows:
        if row.script in missing:
            notes.append(f"row {row.key} ({row.name}) left out: {row.script} does not exist yet")
    rows = [row for row in rows if row.script not in missing]

    seeds = list(dict.fromkeys(args.seeds)) if args.seeds else list(table.seeds)
    for seed in seeds:
        if not 0 <= seed < 2**31 - 1000:  # the MESA task seed is 100 + seed, the scripts' seeds < 2**31
            raise BadInput(f"--seeds {seed}: must be an integer >= 0 and < {2**31 - 1000}")
    tasks = list(dict.fromkeys(args.tasks)) if args.tasks else list(table.tasks)
    for task in tasks:
        if not known_task(table, task):
            more = "" if table.key == "mesa-table2" else " (or any DMC domain-task or gymnasium id with continuous actions)"
            raise BadInput(f"--tasks {task}: not a task of {table.key}; valid: {', '.join(table.tasks)}{more}")

    extra: dict[str, list[str]] = {}
    for text in args.extra:
        prefix = re.match(r"^\s*([A-Za-z0-9][\w.-]*)\s*:\s*(.*)$", text, re.S)
        key, flags = (prefix[1], prefix[2]) if prefix and not text.lstrip().startswith("-") else ("", text)
        if key and key not in by_key:
            raise BadInput(f"--extra {text!r}: {key} is not a row of {table.key}; valid: {', '.join(by_key)}")
        try:
            tokens = shlex.split(flags)
        except ValueError as error:
            raise BadInput(f"--extra {text!r}: {error}") from None
        # one spelling: --flag=value is --flag value (the same run, so the same recorded command)
        tokens = [part for token in tokens
                  for part in (token.split("=", 1) if token.startswith("--") and "=" in token else [token])]
        for row in rows if not key else [by_key[key]]:
            if row.script is None or not (ROOT / row.script).is_file():
                continue
            fields = script_fields(row.script)
            for token in tokens:
                if token.startswith("--") and flag_name(token) in DRIVER_FLAGS:
                    raise BadInput(f"--extra {text!r}: {token.split('=')[0]} is set by this driver per run; "
                                   f"use --tasks, --seeds, --num-test-tasks or --checkpoint-every")
                if token.startswith("--") and flag_name(token) not in fields:
                    raise BadInput(f"--extra {text!r}: {row.script} has no {token.split('=')[0]} "
                                   f"(row {row.key}; see python {row.script} --help)")
        extra.setdefault(key, []).extend(tokens)
    out = Path(args.out or os.path.join("reproduce", table.key))
    return Plan(table, rows, tasks, seeds, out, extra, notes)


def budget_flags(args: Args, row: Row) -> list[str]:
    """The quick-look budget options as the row's script spells them. An option the script has no flag for is
    left out (A2C has no random warm-up), except --total-timesteps: a row it cannot shorten is an error."""
    fields, flags, renamed = script_fields(row.script), [], dict(row.budget_flags)
    for option, scale in (("total_timesteps", row.budget_scale), ("learning_starts", 1), ("eval_every", row.budget_scale)):
        value = getattr(args, option)
        if not value:
            continue
        default = ("eval_every", "eval_frequency") if option == "eval_every" else (option,)  # MADDPG: --eval-frequency
        names = [n for n in renamed.get(option, default) if n in fields]
        if not names and option == "total_timesteps":
            raise BadInput(f"--total-timesteps {value}: {row.script} (row {row.key}) has no --total-timesteps; "
                           f"leave the row out (--rows) or shorten it with --extra \"{row.key}: ...\"")
        for name in names:
            flags += [f"--{name.replace('_', '-')}", str(value * scale)]
    return flags


def build_runs(plan: Plan, args: Args) -> list[Run]:
    """Every run of the selection, in order row, task, seed (test task)."""
    runs = []
    for row in plan.rows:
        if row.script is None:
            continue  # computed in the report
        common = shlex.split(row.flags) + budget_flags(args, row) + plan.extra.get("", []) + plan.extra.get(row.key, [])
        for task in plan.tasks:
            for seed in plan.seeds:
                folder = plan.out / row.key / task / f"seed{seed}"
                if plan.table.key != "mesa-table2":
                    runs.append(Run(row, task, seed, None, folder, tuple(["--env-id", task, "--seed", str(seed), *common])))
                    continue
                column = MESA_COLUMNS[task]
                num_test = args.num_test_tasks or column.num_test_tasks
                flags = [*shlex.split(column.flags), "--seed", str(seed), "--task-seed", str(args.task_seed_offset + seed),
                         "--num-test-tasks", str(num_test), *common]  # fmt: skip
                if not row.per_test_task:
                    runs.append(Run(row, task, seed, None, folder, tuple(flags)))
                    continue
                for j in range(num_test):
                    runs.append(Run(row, task, seed, j, folder / f"test{j}", tuple(flags + ["--test-task-index", str(j)])))
    return runs


def run_argv(run: Run, checkpoint_every: int, resume: bool) -> list[str]:
    """The process's full command line: the script (or its wrapper), its flags, and checkpointing where it has it."""
    fields = script_fields(run.row.script)
    if run.row.wrapper:
        head = ["-c", run.row.wrapper.format(baselines=str(ROOT / "baselines"))]
    else:
        head = [str(ROOT / run.row.script)]
    tail = []
    if checkpoint_every and "checkpoint_every" in fields:
        tail += ["--checkpoint-every", str(checkpoint_every)]
    if resume:
        tail += ["--resume"]
    return [sys.executable, *head, *run.flags, *tail]


def shell_line(run: Run, argv: list[str]) -> str:
    shown = ["python"] + [os.path.relpath(a, ROOT) if a.startswith(str(ROOT) + os.sep) and a.endswith(".py") else a
                          for a in argv[1:]]  # the scripts named from the repository root, as the README does
    return f"(cd {shlex.quote(str(run.folder))} && {shlex.join(shown)})"


# ---------------------------------------------------------------------------------------------
# A run's folder: what it holds decides what happens next (done / resume / fresh)
#   command.json   the run's script and flags (a different command there is an error, not a silent reuse)
#   log.txt        stdout and stderr of every attempt, each after a `==> reproduce:` marker line
#   running.json   the pid and host of the attempt in progress (gone when it ends)
#   result.json    written here when the run ends well: its score, run folder, time (the skip marker)
#   failed.json    the last failed attempt's exit code and log tail (gone when a later one succeeds)
#   runs/          the script's own run folder(s): TensorBoard events, settings.json, checkpoint.pt, result.json
# ---------------------------------------------------------------------------------------------
MARKER = "==> reproduce:"
SCORE_LINE = re.compile(r"^(eval_return|test_return)=(\S+)\s*$")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(obj, path: Path) -> None:
    """Atomically (a kill while writing never leaves half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def script_run_dirs(folder: Path) -> list[Path]:
    """The script's run folders under <folder>/runs, oldest first."""
    return sorted((p for p in (folder / "runs").glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)


def read_result(folder: Path) -> Optional[dict]:
    """The run's result: our result.json, else the newest runs/*/result.json the script wrote (a driver killed
    between the script's end and its own write). None while the run is not done."""
    ours = read_json(folder / "result.json")
    if ours is not None and isinstance(ours.get("score"), (int, float)):
        return ours
    for run_dir in reversed(script_run_dirs(folder)):
        theirs = read_json(run_dir / "result.json")
        if theirs is None:
            continue
        metric = next((k for k in ("eval_return", "test_return") if isinstance(theirs.get(k), (int, float))), None)
        if metric:
            return {"score": float(theirs[metric]), "metric": metric, "run_dir": str(run_dir.relative_to(folder)),
                    "eval_returns": theirs.get("eval_returns")}
    return None


def resumable_checkpoint(folder: Path) -> Optional[Path]:
    """The checkpoint of an interrupted run (a runs/*/checkpoint.pt beside no result.json), the newest."""
    for run_dir in reversed(script_run_dirs(folder)):
        if (run_dir / "checkpoint.pt").is_file() and not (run_dir / "result.json").exists():
            return run_dir / "checkpoint.pt"
    return None


def recorded_command(run: Run) -> dict:
    return {"script": run.row.script, "wrapper": run.row.key if run.row.wrapper else None, "flags": list(run.flags)}


def live_pid(folder: Path) -> Optional[int]:
    """The pid of an attempt still running in this folder (this host; checked through /proc where there is one)."""
    info = read_json(folder / "running.json")
    if not info or info.get("host") != socket.gethostname():
        return None
    pid = info.get("pid")
    try:
        os.kill(pid, 0)
    except (OSError, TypeError):
        return None
    with contextlib.suppress(OSError):  # a reused pid is another process: its working directory tells
        if os.readlink(f"/proc/{pid}/cwd") != str(folder.resolve()):
            return None
    return pid


def state_of(run: Run) -> str:
    """done, resume (a checkpoint to continue from) or fresh; BadInput when the folder holds another command."""
    recorded = read_json(run.folder / "command.json")
    keep = read_result(run.folder) is not None or resumable_checkpoint(run.folder) is not None
    if recorded is not None and recorded != recorded_command(run) and keep:  # (nothing to keep: the new command starts)
        raise BadInput(f"--out {run.folder} holds a run of another command ({shlex.join(recorded.get('flags', []))}); "
                       f"pass another --out, or remove that folder to start it again")
    if read_result(run.folder) is not None:
        return "done"
    if resumable_checkpoint(run.folder) is not None and "resume" in script_fields(run.row.script):
        return "resume"
    return "fresh"


def log_tail(folder: Path, lines: int = 5) -> str:
    """The last lines of the latest attempt's log (after its marker)."""
    try:
        text = (folder / "log.txt").read_text(errors="replace")
    except OSError:
        return "(no log)"
    text = text[text.rfind(MARKER):] if MARKER in text else text
    body = [line for line in text.splitlines()[1:] if line.strip()]
    return "\n".join(body[-lines:]) or "(empty log)"


def libc_prctl():
    """Linux's prctl (None elsewhere): looked up in the parent, since loading a library between fork and exec
    may deadlock."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
    except (OSError, AttributeError):
        return None


def child_preexec(prctl) -> None:
    """In the run's process, before the script starts: a SIGINT when this driver dies, however it dies (Linux), so
    the run checkpoints and stops instead of running on unwatched; SIGUSR2 ignored, since SLURM's warning of a
    timeout or preemption (USR2) may reach every process of the job and would otherwise kill the run."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    if prctl is not None:
        prctl(1, int(signal.SIGINT))  # 1 = PR_SET_PDEATHSIG


def child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")  # as the README's commands: rendering (never used by these runs) off-screen
    env.setdefault("OMP_NUM_THREADS", "1")  # with --torch-threads 1 (the scripts' default): a run is one core
    env["PYTHONUNBUFFERED"] = "1"  # the log shows progress lines as they come
    return env


class Attempt:
    """One process of a run: started in its folder, its output appended to log.txt."""

    def __init__(self, run: Run, checkpoint_every: int, resume: bool):
        self.run, self.resume, self.start = run, resume, time.time()
        run.folder.mkdir(parents=True, exist_ok=True)
        write_json(recorded_command(run), run.folder / "command.json")
        argv = run_argv(run, checkpoint_every, resume)
        self.log = open(run.folder / "log.txt", "a")
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        what = "resume" if resume else "start"
        self.log.write(f"{MARKER} {what} {stamp} on {socket.gethostname()}: {shell_line(run, argv)}\n")
        self.log.flush()
        prctl = libc_prctl()
        self.process = subprocess.Popen(  # a session of its own: a Ctrl-C at the terminal reaches this driver only
            argv, cwd=run.folder, stdout=self.log, stderr=subprocess.STDOUT, env=child_env(), stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=lambda: child_preexec(prctl))
        info = {"pid": self.process.pid, "host": socket.gethostname(), "start": self.start}
        write_json(info, run.folder / "running.json")

    def finish(self, code: int) -> tuple[bool, str]:
        """After the process ended with `code`: (succeeded, one line for the user). Writes result.json or failed.json."""
        self.log.close()
        folder = self.run.folder
        with contextlib.suppress(OSError):
            (folder / "running.json").unlink()
        seconds = time.time() - self.start
        result = read_result(folder) if code == 0 else None
        if code == 0 and result is None:  # a script without result.json (yet): its score is its last line
            text = (folder / "log.txt").read_text(errors="replace")
            scores = [SCORE_LINE.match(line) for line in text[text.rfind(MARKER):].splitlines()]
            scores = [m for m in scores if m]
            if scores:
                dirs = script_run_dirs(folder)
                result = {"score": float(scores[-1][2]), "metric": scores[-1][1],
                          "run_dir": str(dirs[-1].relative_to(folder)) if dirs else None}
        if result is not None:
            result.update(seconds=round(seconds, 1), finished=datetime.datetime.now().isoformat(timespec="seconds"),
                          command=recorded_command(self.run))
            write_json(result, folder / "result.json")
            with contextlib.suppress(OSError):
                (folder / "failed.json").unlink()
            return True, f"done: {self.run.label}: {result['metric']}={result['score']:.4g} ({seconds / 60:.1f} min)"
        tail = log_tail(folder)
        why = f"exit {code}" if code else "exit 0 but no eval_return=/test_return= line"
        write_json({"exit_code": code, "tail": tail, "seconds": round(seconds, 1)}, folder / "failed.json")
        return False, f"failed: {self.run.label} ({why}), log {folder / 'log.txt'}:\n" + "\n".join(
            "    " + line for line in tail.splitlines())


# ---------------------------------------------------------------------------------------------
# Progress of a run from its log (the scripts print `PHASE: step a/b (...)` lines off a terminal)
# ---------------------------------------------------------------------------------------------
PROGRESS_LINE = re.compile(r"^(?P<phase>[a-z -]+?)(?: (?P<i>\d+)/(?P<n>\d+))?: step (?P<a>\d+)/(?P<b>\d+)", re.M)
# (start, width) of each phase in a run's whole; MESA's are rough thirds (collection, exploration policies, tests)
PHASES = {"warm-up": (0.0, 0.0), "learning": (0.0, 1.0), "test task": (0.0, 1.0), "skill pre-training": (0.0, 0.5),
          "fine-tuning": (0.0, 1.0)}  # DIAYN's fine-tuning counts its steps from the start of pre-training
MESA_PHASES = {"collect task": (0.0, 1 / 3), "explorer": (1 / 3, 1 / 3), "test task": (2 / 3, 1 / 3)}


def run_fraction(run: Run) -> float:
    """How much of the run is done, in [0, 1), from the last progress line of its log."""
    try:
        with open(run.folder / "log.txt", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            text = f.read().decode(errors="replace")
    except OSError:
        return 0.0
    lines = list(PROGRESS_LINE.finditer(text))
    if not lines:
        return 0.0
    m = lines[-1]
    phases = MESA_PHASES if run.row.script == "mesa_maddpg.py" else PHASES
    start, width = phases.get(m["phase"], (0.0, 0.0))
    within = int(m["a"]) / max(int(m["b"]), 1)
    if m["i"] and phases is MESA_PHASES:
        within = (int(m["i"]) - 1 + within) / max(int(m["n"]), 1)
    return min(start + width * within, 0.99)


def hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------------------------------------
# --launcher local: a pool of processes
# ---------------------------------------------------------------------------------------------
def run_local(todo: list[tuple[Run, str]], args: Args) -> list[str]:
    """Run every (run, state) with `--jobs` at a time; the failures' messages. Ctrl-C: one SIGINT to every run
    (each checkpoints and stops), then Interrupted; a second Ctrl-C: a second SIGINT (they stop at once)."""
    jobs = args.jobs or os.cpu_count() or 1
    tqdm.monitor_interval = 0  # no tqdm monitor thread: the runs are forked from this process (child_preexec)
    pending, running, failed, done = list(todo), [], [], 0
    interactive = sys.stdout.isatty()
    bar = tqdm(total=len(todo), dynamic_ncols=True, file=sys.stdout, bar_format="{desc} {percentage:3.0f}%|{bar}|") \
        if interactive else None  # fmt: skip
    say = bar.write if bar else (lambda line: print(line, flush=True))
    start, last_line, fractions, last_read, finish_at = time.time(), 0.0, {}, 0.0, math.inf
    initial = sum(run_fraction(run) for run, state in todo if state == "resume")  # work already done by earlier tries
    stopping = False
    try:
        while pending or running:
            if STOP_REQUESTED[0] and not stopping:
                stopping, pending = True, []
                for attempt in running:
                    with contextlib.suppress(OSError):
                        attempt.process.send_signal(signal.SIGINT)
            while pending and len(running) < jobs and not stopping:
                run, state = pending.pop(0)
                running.append(Attempt(run, args.checkpoint_every, state == "resume"))
            for attempt in list(running):
                code = attempt.process.poll()
                if code is None:
                    continue
                running.remove(attempt)
                if stopping and code in (EXIT_INTERRUPTED, -signal.SIGINT):
                    attempt.log.close()
                    with contextlib.suppress(OSError):
                        (attempt.run.folder / "running.json").unlink()
                    continue
                ok, message = attempt.finish(code)
                done += ok
                if not ok:
                    failed.append(message)
                say(message)
            now = time.time()
            work = done + len(failed) + sum(fractions.get(a.run, 0.0) for a in running)
            if now - last_read > 5 or not running:  # the runs' logs, read every few seconds: time left from the work done
                fractions, last_read = {a.run: run_fraction(a.run) for a in running}, now
                work = done + len(failed) + sum(fractions.get(a.run, 0.0) for a in running)
                rate = (work - initial) / max(now - start, 1e-9)
                finish_at = now + (len(todo) - work) / rate if rate > 0 else math.inf
            status = (f"{done} done, {len(running)} running, {len(failed)} failed, {len(pending)} waiting, "
                      f"{hms(max(finish_at - now, 0.0))} left")
            if stopping:
                status = f"stopping: waiting for {len(running)} runs to checkpoint (Ctrl-C again: stop at once)"
            if bar is not None:
                bar.n = min(work, len(todo))
                bar.set_description_str(f"{args.table}: {status}")
            elif now - last_line >= 30:
                last_line = now
                say(f"{args.table}: {status}")
            if running:
                time.sleep(0.25)
    except KeyboardInterrupt:  # the second Ctrl-C: the runs stop at once (their last periodic checkpoint stays)
        for attempt in running:
            with contextlib.suppress(OSError):
                attempt.process.send_signal(signal.SIGINT)
        for attempt in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                attempt.process.wait(10)
            if attempt.process.poll() is None:
                attempt.process.kill()
                attempt.process.wait()
            attempt.log.close()
            with contextlib.suppress(OSError):
                (attempt.run.folder / "running.json").unlink()
        stopping = True
    finally:
        if bar is not None:
            bar.close()
    if stopping:
        raise Interrupted(f"{done} runs done, the others stopped (with a checkpoint where the script writes one); "
                          f"the same command resumes them")
    return failed


# ---------------------------------------------------------------------------------------------
# --launcher slurm: one submitit job per run, requeued on timeout or preemption, resumed from its checkpoint
# ---------------------------------------------------------------------------------------------
class SubmititRun:
    """A run as a submitit job. Called on a node: starts or resumes the run in its folder and waits for it.
    submitit's checkpointing protocol: before a timeout or a preemption SLURM signals the job (USR2);
    submitit calls `checkpoint()`, which asks the run to checkpoint and stop (SIGINT) and returns the same
    job to requeue; the requeued job finds the checkpoint and resumes it with `--resume`."""

    def __init__(self, run: Run, checkpoint_every: int, grace_s: float = 120.0):
        self.run, self.checkpoint_every, self.grace_s = run, checkpoint_every, grace_s
        self.attempt = None

    def __getstate__(self):  # the live process never travels with the pickle
        return {**self.__dict__, "attempt": None}

    def __call__(self) -> dict:
        state = state_of(self.run)
        if state == "done":
            return read_result(self.run.folder)
        self.attempt = Attempt(self.run, self.checkpoint_every, state == "resume")
        while self.attempt.process.poll() is None:  # not wait(): it would hold a lock that checkpoint() may need
            time.sleep(1.0)
        ok, message = self.attempt.finish(self.attempt.process.returncode)
        if not ok:
            raise RuntimeError(message)
        return read_result(self.run.folder)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit's signal handler in the middle of __call__: stop the run with its checkpoint, requeue."""
        import submitit

        attempt = self.attempt
        if attempt is not None and attempt.process.returncode is None:
            pid = attempt.process.pid
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGINT)  # the script checkpoints at its next step and exits 130
            deadline = time.time() + self.grace_s
            while not os.waitpid(pid, os.WNOHANG)[0]:  # reaped here: __call__ never resumes after this handler
                if time.time() > deadline:
                    os.kill(pid, signal.SIGKILL)  # its last periodic checkpoint stays
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.2)
            attempt.log.close()
            with contextlib.suppress(OSError):
                (self.run.folder / "running.json").unlink()
        return submitit.helpers.DelayedSubmission(SubmititRun(self.run, self.checkpoint_every, self.grace_s))


def run_slurm(todo: list[tuple[Run, str]], args: Args, plan: Plan) -> Optional[list[str]]:
    """Submit every run as a job of one array; with --wait, wait for them and return the failures' messages."""
    import cloudpickle
    import submitit

    module = sys.modules[SubmititRun.__module__]
    if module.__name__ != "__main__":  # a job must not need this file importable on the node: pickle the code itself
        cloudpickle.register_pickle_by_value(module)
    executor = submitit.AutoExecutor(folder=plan.out / "submitit", cluster=args.slurm_cluster,
                                     slurm_max_num_timeout=args.slurm_max_requeues,
                                     local_max_num_timeout=args.slurm_max_requeues)  # fmt: skip
    # SLURM warns a job 120 s before its time limit (USR2, `#SBATCH --signal=USR2@120`): time for checkpoint()
    parameters = dict(name=f"reproduce-{plan.table.key}", timeout_min=args.slurm_time_min, nodes=1, tasks_per_node=1,
                      cpus_per_task=args.slurm_cpus_per_run, mem_gb=args.slurm_mem_gb,
                      slurm_array_parallelism=args.slurm_array_parallelism, slurm_signal_delay_s=120)  # fmt: skip
    if args.slurm_gpus_per_run:
        parameters["gpus_per_node"] = args.slurm_gpus_per_run
    if args.slurm_partition:
        parameters["slurm_partition"] = args.slurm_partition
    if args.slurm_account:
        parameters["slurm_account"] = args.slurm_account
    if args.slurm_setup:
        parameters["slurm_setup"] = list(args.slurm_setup)
    executor.update_parameters(**parameters)
    with executor.batch():
        jobs = [executor.submit(SubmititRun(run, args.checkpoint_every)) for run, _ in todo]
    for (run, _), job in zip(todo, jobs):
        run.folder.mkdir(parents=True, exist_ok=True)
        write_json(recorded_command(run), run.folder / "command.json")
        write_json({"job_id": job.job_id, "cluster": args.slurm_cluster}, run.folder / "job.json")
    print(f"submitted {len(jobs)} runs as jobs {jobs[0].job_id}..{jobs[-1].job_id} ({args.slurm_cluster}); "
          f"logs in {plan.out}/<row>/<task>/seed<k>/log.txt, submitit's in {plan.out / 'submitit'}", flush=True)
    if not args.wait:
        print(f"when they are done: python benchmarks/reproduce.py {plan.table.key} --report-only --out {plan.out}")
        return None
    failed, waiting = [], list(zip(todo, jobs))
    try:
        while waiting:
            for (run, state), job in list(waiting):
                if not job.done():
                    continue
                waiting.remove(((run, state), job))
                try:
                    job.result()
                    print(f"done: {run.label}", flush=True)
                except Exception as error:  # submitit re-raises the job's error (our RuntimeError) with its traceback
                    message = str(error).strip().splitlines()
                    last = message[-1] if message else type(error).__name__
                    failed.append(next((line for line in message if line.startswith("failed:")), f"failed: {run.label}: {last}"))
                    print(failed[-1], flush=True)
            if STOP_REQUESTED[0]:
                raise KeyboardInterrupt
            time.sleep(1.0)
    except KeyboardInterrupt:
        raise Interrupted(f"stopped waiting; {len(waiting)} jobs are still queued or running on the cluster") from None
    return failed


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
def k1_only_return(task: str, seed: int, num_test_tasks: int, offset: int = MESA_TASK_SEED_OFFSET) -> Optional[float]:
    """Climb games: the mean test return of a learner that solves every k = 1 stage and no k = 2 stage of the
    seed's test tasks (1 and 0.5 per stage), from the task draw alone (no training); None for other columns."""
    if task not in ("climb-one-step", "climb-multi-stage"):
        return None
    sys.path.insert(0, str(ROOT))
    from envs.multiagent import sample_tasks

    _, test = sample_tasks(task, 10, num_test_tasks, offset + seed)
    stages = [t if isinstance(t, tuple) else (t,) for t in test]  # one-step: one stage
    return float(np.mean([np.mean([1.0 if stage.k == 1 else 0.5 for stage in t]) for t in stages]))


def multi_stage_ceiling(task_seeds, num_train: int = 10, num_test: int = 5) -> dict:
    """What meta-exploration can add on climb-multi-stage, from the task draws alone (no training).

    A learner that solves every k = 1 stage (one agent moving to u is a strict improvement, so gradient
    learners find it) and no k = 2 stage averages `maddpg`. MESA's exploration can only show a test stage
    (k = 2, u) its optimum (u, u) if that joint action is in M*, i.e. if some training task has (2, u) at the
    same stage; `mesa_bound` also solves all of those.
    """
    sys.path.insert(0, str(ROOT))
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


def ceiling_line(offset: int = MESA_TASK_SEED_OFFSET) -> str:
    first, last = offset + 1, offset + 30
    c = multi_stage_ceiling(range(first, last + 1))
    return (f"climb-multi-stage, task seeds {first}..{last}, 5 test tasks each: {c['stages']} test stages, "
            f"{c['k2_fraction']:.0%} with k = 2, of which {c['k2_optimum_in_mstar']:.0%} have their optimum (u, u) at "
            f"that stage in some training task; solving every k = 1 stage gives {c['maddpg']:.3f}, solving those "
            f"k = 2 stages too gives at most {c['mesa_bound']:.3f}")


def aggregate(scores: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> dict[str, dict[str, tuple]]:
    """{row: scores [runs, tasks]} -> {row: {"iqm": (point, low, high), "mean": (...)}}: the interquartile mean
    (the mean of the middle 50% of all runs x tasks scores, rliable's `aggregate_iqm`) and the mean, each with a
    95% stratified bootstrap confidence interval (runs resampled within each task; Agarwal et al. 2021)."""
    from rliable import library as rly
    from rliable import metrics

    # Easy to miss: rliable 1.2.0 draws its resamples from numpy's global generator (StratifiedBootstrap.
    # update_indices), whatever random_state says; seeded here (and restored) so that a report is reproducible.
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch, under rliable, warns that RandomState will be deprecated: not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            point, interval = rly.get_interval_estimates(
                scores, lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)]), reps=reps,
                random_state=np.random.RandomState(seed))  # fmt: skip
    finally:
        np.random.set_state(saved)
    return {row: {name: (float(point[row][i]), float(interval[row][0][i]), float(interval[row][1][i]))
                  for i, name in enumerate(("iqm", "mean"))} for row in scores}


def read_curve(folder: Path, result: Optional[dict]) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(steps, returns) of a CE run's evaluations: its TensorBoard `eval/return` (also of an unfinished run),
    else its result.json's eval_returns at the eval spacing of its settings.json."""
    dirs = script_run_dirs(folder)
    run_dir = folder / result["run_dir"] if result and result.get("run_dir") else (dirs[-1] if dirs else None)
    if run_dir is None or not run_dir.is_dir():
        return None
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        tensorboard_log = logging.getLogger("tensorboard")
        level = tensorboard_log.level
        tensorboard_log.setLevel(logging.ERROR)  # a resumed run's events after its checkpoint are purged (rightly),
        try:  # and TensorBoard warns about each purge
            events.Reload()
        finally:
            tensorboard_log.setLevel(level)
        if "eval/return" in events.Tags()["scalars"]:
            points = {e.step: e.value for e in events.Scalars("eval/return")}  # a resumed run logs some steps twice
            steps = np.array(sorted(points))
            return steps, np.array([points[s] for s in steps])
    except Exception:  # an event file cut by a kill: fall back to result.json
        pass
    saved = read_json(run_dir / "result.json") or {}
    settings = (read_json(run_dir / "settings.json") or {}).get("settings", {})
    returns, every = saved.get("eval_returns"), settings.get("eval_every")
    if not returns or not every:
        return None
    steps = np.minimum(every * np.arange(1, len(returns) + 1), saved.get("global_step", math.inf))
    return steps.astype(float), np.array(returns, dtype=float)


def bootstrap_band(values: np.ndarray, reps: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """values [seeds, steps] -> the 95% percentile bootstrap interval of the mean over seeds at every step."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(reps, values.shape[0]))  # [reps, seeds]
    means = values[idx].mean(1)  # [reps, steps]
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def collect(plan: Plan, args: Args) -> dict:
    """Every cell's seed values and every run's status, from the folders under plan.out."""
    table = plan.table
    cells: dict[tuple[str, str], dict[int, float]] = {}
    status: dict[str, list[str]] = {"failed": [], "running": [], "interrupted": [], "not started": []}
    seconds, curves, settings = 0.0, {}, {}
    # the runs' own settings beyond the paper's command (budgets, --extra), read from what each folder recorded
    bare = replace(args, total_timesteps=0, learning_starts=0, eval_every=0, extra=())
    bare_plan = Plan(table, plan.rows, plan.tasks, plan.seeds, plan.out, {})
    paper_flags = {run.folder: list(run.flags) for run in build_runs(bare_plan, bare)}
    for row in plan.rows:
        for task in plan.tasks:
            values = cells.setdefault((row.key, task), {})
            for seed in plan.seeds:
                if row.script is None:  # computed from the task draws
                    num_test = args.num_test_tasks or MESA_COLUMNS[task].num_test_tasks
                    value = k1_only_return(task, seed, num_test, args.task_seed_offset)
                    if value is not None:
                        values[seed] = value
                    continue
                folder = plan.out / row.key / task / f"seed{seed}"
                if row.per_test_task:
                    num_test = args.num_test_tasks or MESA_COLUMNS[task].num_test_tasks
                    parts = [(folder / f"test{j}", f"{row.key} {task} seed{seed} test{j}") for j in range(num_test)]
                else:
                    parts = [(folder, f"{row.key} {task} seed{seed}")]
                results = []
                for part, label in parts:
                    result = read_result(part)
                    results.append(result)
                    recorded = (read_json(part / "command.json") or {}).get("flags")
                    if recorded is not None and part in paper_flags:  # recorded = paper's prefix + settings (+ test index)
                        suffix = 2 if row.per_test_task else 0
                        prefix = len(paper_flags[part]) - suffix
                        settings.setdefault(shlex.join(recorded[prefix:len(recorded) - suffix]), set()).add(row.name)
                    if result is not None:
                        seconds += result.get("seconds", 0.0)
                    elif (part / "failed.json").exists():
                        failure = read_json(part / "failed.json") or {}
                        last = (failure.get("tail") or "").strip().splitlines()[-1:] or [""]
                        status["failed"].append(f"{label} (exit {failure.get('exit_code')}): {last[0]}")
                    elif live_pid(part) is not None or (part / "job.json").exists() and (part / "running.json").exists():
                        status["running"].append(label)
                    elif resumable_checkpoint(part) is not None:
                        status["interrupted"].append(f"{label} (a checkpoint to resume from)")
                    else:
                        status["not started"].append(label)
                    if table.metric == CE_KIND and (result is not None or part.is_dir()):
                        curve = read_curve(part, result)
                        if curve is not None:
                            curves[(row.key, task, seed)] = curve
                if results and all(r is not None for r in results):
                    values[seed] = float(np.mean([r["score"] for r in results]))
    return {"cells": cells, "status": status, "seconds": seconds, "curves": curves, "settings": settings}


def invocation() -> str:
    """This driver's command line as the user typed it (a call of main() from Python has none)."""
    if not sys.argv[0].endswith("reproduce.py"):
        return "(main() called from Python)"
    return shlex.join(["python", "benchmarks/reproduce.py", *sys.argv[1:]])


def write_report(plan: Plan, args: Args) -> Path:
    """<out>/report.md (+ curves.png, aggregate.png for the CE tables) from whatever runs exist."""
    table, out = plan.table, plan.out
    out.mkdir(parents=True, exist_ok=True)
    data = collect(plan, args)
    cells, paper = data["cells"], PAPER[table.key]
    digits = 2 if table.key == "mesa-table2" else 1
    lines = [f"# {table.title}", ""]
    stamp = datetime.datetime.now().isoformat(timespec="minutes")
    lines += [f"Written {stamp} from the runs under `{out}` by `{invocation()}`.", ""]
    changed = {flags: rows for flags, rows in data["settings"].items() if flags}
    if changed:  # what the runs themselves were given, whatever this invocation says
        lines += ["**Settings: not the paper's.** Beyond the paper's command the runs had " + "; ".join(
            f"`{flags}` ({', '.join(sorted(rows))})" for flags, rows in changed.items()) + ". The paper's numbers are at "
            "its budgets, so the two are not comparable.", ""]  # fmt: skip
    elif data["settings"]:
        lines += ["**Settings:** the paper's (the scripts' defaults).", ""]
    if args.num_test_tasks:
        lines += [f"Test tasks per seed: {args.num_test_tasks} (the paper's: " + ", ".join(
            f"{c.label} {c.num_test_tasks}" for k, c in MESA_COLUMNS.items() if k in plan.tasks) + ").", ""]
    score = ("a run's score is `eval_return`, the mean of its last 10 evaluations (Appendix D.1)" if table.metric == CE_KIND
             else "a seed's score is the mean final `test_return` over its test tasks")
    lines += [f"Each cell: ours, mean (std) over the n seeds that finished ({score}; std with ddof = 0), then the "
              f"paper's mean (std). Seeds {', '.join(map(str, plan.seeds))}.", ""]
    if table.note:
        lines += [table.note.format(offset=args.task_seed_offset), ""]

    def cell(row: Row, task: str) -> str:
        values = list(cells.get((row.key, task), {}).values())
        ours = (f"{fmt(np.mean(values), digits)} ({fmt(np.std(values), digits)}), n={len(values)}" if values
                else ("n/a" if row.script is None else "—, n=0"))
        theirs = paper.get(row.name, {}).get(task)
        return ours + (f"<br>paper {fmt(theirs[0], digits)} ({fmt(theirs[1], digits)})" if theirs else "")

    label = (lambda task: MESA_COLUMNS[task].label) if table.key == "mesa-table2" else (lambda task: task)
    lines += ["| task | " + " | ".join(row.name for row in plan.rows) + " |", "|---|" + "---|" * len(plan.rows)]
    lines += [f"| {label(task)} | " + " | ".join(cell(row, task) for row in plan.rows) + " |" for task in plan.tasks]
    lines.append("")

    aggregates = {}
    if table.metric == CE_KIND:
        scores = {}
        for row in plan.rows:
            seeds = [s for s in plan.seeds if all(s in cells.get((row.key, t), {}) for t in plan.tasks)]
            if seeds:
                scores[row.name] = np.array([[cells[(row.key, t)][s] for t in plan.tasks] for s in seeds])  # [seeds, tasks]
        lines += ["## Aggregate over tasks and seeds", "",
                  "The paper's aggregate (section 5.2, Fig. 3): the interquartile mean (IQM, the mean of the middle 50% "
                  "of all seed x task scores) with a 95% stratified bootstrap confidence interval (Agarwal et al. 2021, "
                  f"rliable, {args.bootstrap_reps} resamples), and the mean. We aggregate the raw returns: DMC's are "
                  "already in [0, 1000], so no normalisation is needed (divide by 1000 for [0, 1]); other tasks' "
                  "returns are aggregated as they are. Fig. 3 gives no numbers in the text, so there is no paper "
                  "column. A row counts only the seeds that finished every task.", ""]
        if scores:
            aggregates = aggregate(scores, args.bootstrap_reps)
            lines += ["| row | IQM [95% CI] | mean [95% CI] | seeds x tasks |", "|---|---|---|---|"]
            for name, a in aggregates.items():
                estimates = " | ".join(f"{fmt(a[k][0], 1)} [{fmt(a[k][1], 1)}, {fmt(a[k][2], 1)}]" for k in ("iqm", "mean"))
                lines.append(f"| {name} | {estimates} | {scores[name].shape[0]} x {scores[name].shape[1]} |")
        else:
            lines.append("(no row has a seed that finished every task yet)")
        lines.append("")
        if plot_report(plan, data, aggregates):
            lines += ["## Plots", "", "Learning curves (mean over seeds, at the evaluations every seed has reached, 95% "
                      "bootstrap band; dashed: the paper's final score where it gives one):", "",
                      "![learning curves](curves.png)", ""]
            if aggregates:
                lines += ["![IQM](aggregate.png)", ""]
    elif "climb-multi-stage" in plan.tasks:
        lines += ["## The multi-stage climb game's ceiling (task draws only, no training)", "",
                  ceiling_line(args.task_seed_offset) + ".", ""]

    status = data["status"]
    lines += ["## Runs", ""]
    sweeps = read_json(out / "sweeps.json") or []
    if sweeps:
        lines += ["Sweeps of this folder (wall-clock h:mm:ss; the latest last):", ""]
        lines += [f"- {s['started']}, {hms(s['seconds'])}, {s['to_do']} of {s['runs']} runs to do, {s['launcher']} on "
                  f"{s['host']}, {s['outcome']}: `{s['command']}`" for s in sweeps[-5:]]
        lines.append("")
    lines.append(f"The finished runs took {hms(data['seconds'])} together (each one's last attempt, as its own wall-clock).")
    for what in ("failed", "interrupted", "running", "not started"):
        if status[what]:
            shown = status[what][:20]
            lines += ["", f"{what.capitalize()} ({len(status[what])}):", *[f"- {s}" for s in shown]]
            if len(status[what]) > len(shown):
                lines.append(f"- ... and {len(status[what]) - len(shown)} more")
    if not any(status.values()):
        lines.append("Every run of the selection has finished.")
    lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def plot_report(plan: Plan, data: dict, aggregates: dict) -> bool:
    """curves.png (a panel per task) and aggregate.png (IQM bars); False when there is nothing to plot."""
    if not data["curves"]:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    paper = PAPER[plan.table.key]
    columns = min(len(plan.tasks), 4)
    rows_n = math.ceil(len(plan.tasks) / columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(3.6 * columns, 2.8 * rows_n), squeeze=False)
    for ax, task in zip(axes.flat, plan.tasks):
        for i, row in enumerate(plan.rows):
            color = colors[i % len(colors)]
            curves = [data["curves"][(row.key, task, s)] for s in plan.seeds if (row.key, task, s) in data["curves"]]
            if curves:
                steps = sorted(set.intersection(*(set(c[0].tolist()) for c in curves)))  # the steps every seed reached
                if not steps:
                    steps = curves[0][0].tolist()
                    curves = curves[:1]
                values = np.array([[dict(zip(c[0].tolist(), c[1]))[s] for s in steps] for c in curves])  # [seeds, steps]
                ax.plot(steps, values.mean(0), color=color, label=f"{row.name} (n={len(curves)})")
                if len(curves) > 1:
                    low, high = bootstrap_band(values)
                    ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
            final = paper.get(row.name, {}).get(task)
            if final:
                ax.axhline(final[0], color=color, linestyle="--", linewidth=1)
        if any(paper.get(row.name, {}).get(task) for row in plan.rows):  # (Fig. 4 has curves only: no line)
            ax.plot([], [], color="gray", linestyle="--", linewidth=1, label="paper, final")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("env steps", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(plan.tasks):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(plan.out / "curves.png", dpi=80)
    plt.close(fig)
    if aggregates:
        fig, ax = plt.subplots(figsize=(max(3.2, 1.2 + 0.9 * len(aggregates)), 2.8))
        names = list(aggregates)
        iqm = np.array([aggregates[n]["iqm"] for n in names])  # [rows, 3]: point, low, high
        ax.bar(range(len(names)), iqm[:, 0], yerr=[iqm[:, 0] - iqm[:, 1], iqm[:, 2] - iqm[:, 0]], capsize=4,
               color=[colors[[r.name for r in plan.rows].index(n) % len(colors)] for n in names])
        ax.set_xticks(range(len(names)), names, fontsize=8, rotation=30 if len(names) > 4 else 0)
        ax.set_ylabel("IQM of returns", fontsize=8)
        ax.set_title("IQM, 95% stratified bootstrap CI", fontsize=9)
        ax.tick_params(labelsize=7)
        fig.tight_layout()
        fig.savefig(plan.out / "aggregate.png", dpi=80)
        plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def discover(plan: Plan, args: Args) -> tuple[Plan, Args]:
    """--report-only: the rows, tasks and seeds found under plan.out where none were given (else the table's),
    and MESA's test tasks per seed and task-seed offset as the runs recorded them."""
    found_rows, found_tasks, found_seeds, recorded = set(), set(), set(), {}
    for command in plan.out.glob("*/*/seed*/**/command.json"):
        parts = command.relative_to(plan.out).parts
        found_rows.add(parts[0])
        found_tasks.add(parts[1])
        with contextlib.suppress(ValueError):
            seed = int(parts[2][len("seed"):])
            found_seeds.add(seed)
            flags = (read_json(command) or {}).get("flags", [])
            for name, value in zip(flags, flags[1:]):
                if name == "--num-test-tasks":
                    recorded.setdefault("num_test_tasks", set()).add(int(value))
                elif name == "--task-seed":
                    recorded.setdefault("task_seed_offset", set()).add(int(value) - seed)
    if plan.table.key == "mesa-table2":
        defaults = {c.num_test_tasks for k, c in MESA_COLUMNS.items() if k in found_tasks}
        counts = recorded.get("num_test_tasks", set())
        if not args.num_test_tasks and len(counts) == 1 and counts != defaults:
            args = replace(args, num_test_tasks=counts.pop())
        offsets = recorded.get("task_seed_offset", set())
        if args.task_seed_offset == MESA_TASK_SEED_OFFSET and len(offsets) == 1:
            args = replace(args, task_seed_offset=offsets.pop())
    if not found_rows:
        return plan, args
    rows = plan.rows if args.rows else [
        row for row in plan.table.rows if row.key in found_rows or (row.script is None and row.default)]
    tasks = plan.tasks if args.tasks else (
        [t for t in plan.table.tasks if t in found_tasks] + sorted(found_tasks - set(plan.table.tasks)))
    seeds = plan.seeds if args.seeds else sorted(found_seeds)
    return Plan(plan.table, rows, tasks, seeds, plan.out, plan.extra, plan.notes), args


def main(args: Args) -> dict:
    """Run (or list, or report) the table's selection; returns {"runs", "failed", "report"}."""
    plan = validate(args)
    if args.ceiling:
        print(ceiling_line(args.task_seed_offset))
        return {"runs": 0, "failed": [], "report": None}
    for note in plan.notes:
        print(f"note: {note}", flush=True)
    if args.report_only:
        plan, args = discover(plan, args)
        path = write_report(plan, args)
        print(f"report: {path}")
        return {"runs": 0, "failed": [], "report": str(path)}
    runs = build_runs(plan, args)
    states = [(run, state_of(run)) for run in runs]  # BadInput for a folder of another command, before anything starts
    todo = [(run, state) for run, state in states if state != "done"]
    if args.dry_run:
        for run, state in todo:
            print(shell_line(run, run_argv(run, args.checkpoint_every, state == "resume")))
        print(f"# {len(runs)} runs: {len(runs) - len(todo)} done, {sum(s == 'resume' for _, s in todo)} to resume, "
              f"{sum(s == 'fresh' for _, s in todo)} to start")
        return {"runs": len(runs), "failed": [], "report": None}
    busy = [(run, pid) for run, _ in todo if (pid := live_pid(run.folder)) is not None]
    deadline = time.time() + 30  # runs of a killed driver get a SIGINT (child_preexec) and stop within seconds
    while busy and time.time() < deadline:
        time.sleep(0.5)
        busy = [(run, pid) for run, pid in busy if live_pid(run.folder) is not None]
    if busy:
        raise BadInput(f"--out {plan.out}: {busy[0][0].folder} is still running (pid {busy[0][1]}) from an earlier "
                       f"sweep; wait for it or stop it (kill -INT {busy[0][1]})")
    # a run of a killed driver may have finished or checkpointed while we waited: read the folders again
    todo = [(run, state) for run in runs if (state := state_of(run)) != "done"]
    for run in runs:  # a driver killed between a script's end and its own write: record the script's result now
        if not (run.folder / "result.json").exists() and (result := read_result(run.folder)) is not None:
            write_json({**result, "command": recorded_command(run)}, run.folder / "result.json")
    print(f"{plan.table.key}: {len(runs)} runs ({len(plan.rows)} rows x {len(plan.tasks)} tasks x {len(plan.seeds)} "
          f"seeds), {len(runs) - len(todo)} done, {sum(s == 'resume' for _, s in todo)} to resume, "
          f"{sum(s == 'fresh' for _, s in todo)} to start; folder {plan.out}", flush=True)
    if not todo:
        path = write_report(plan, args)
        print(f"report: {path}")
        return {"runs": len(runs), "failed": [], "report": str(path)}
    previous = signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGINT))  # `kill PID` stops the sweep as Ctrl-C does
    start, failed = time.time(), None
    try:
        failed = run_local(todo, args) if args.launcher == "local" else run_slurm(todo, args, plan)
    finally:
        signal.signal(signal.SIGTERM, previous)
        outcome = "interrupted" if failed is None and (args.launcher == "local" or args.wait) else (
            "submitted" if failed is None else f"finished, {len(failed)} failed")
        sweeps = read_json(plan.out / "sweeps.json") or []
        sweeps.append({"command": invocation(), "launcher": args.launcher, "host": socket.gethostname(), "runs": len(runs),
                       "to_do": len(todo), "started": datetime.datetime.fromtimestamp(start).isoformat(timespec="seconds"),
                       "seconds": round(time.time() - start, 1), "outcome": outcome})  # fmt: skip
        plan.out.mkdir(parents=True, exist_ok=True)
        write_json(sweeps, plan.out / "sweeps.json")
    if failed is None:  # submitted to SLURM, not waited for
        return {"runs": len(runs), "failed": [], "report": None}
    path = write_report(plan, args)
    print(f"report: {path}")
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed:", *failed, sep="\n", file=sys.stderr)
    return {"runs": len(runs), "failed": failed, "report": str(path)}


def main_exit(args: Args) -> None:
    """main, then exit 1 when a run failed (the sweep itself finished)."""
    if main(args)["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    # `--extra "--batch-size 64"`: a value that starts with "--" is read as a flag unless glued to its option
    argv = sys.argv
    for i in range(len(argv) - 2, 0, -1):
        if argv[i] in ("--extra", "--slurm-setup") and argv[i + 1].startswith("-"):
            argv[i:i + 2] = [f"{argv[i]}={argv[i + 1]}"]
    cli(main_exit, Args)
