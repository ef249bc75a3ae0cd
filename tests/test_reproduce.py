"""benchmarks/reproduce.py: the sweep driver of the papers' tables.

A tiny sweep (SAC on pendulum-swingup and Pendulum-v1, seeds 1 and 2, 600 env steps) through the
local launcher, stopped part way twice (Ctrl-C, then SIGKILL of the driver and its runs) and
restarted: finished runs are not run again, interrupted ones resume from their checkpoints, the
report lists every cell. The same sweep through the SLURM path with submitit's local executor, one
job preempted (SIGUSR2, as SLURM warns) and requeued from its checkpoint. The aggregation on
hand-made scores; the paper's numbers in the report; bad input.

Budget: about two minutes on a 2-core CPU (the sweeps are subprocesses, each run a few seconds).
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import reproduce  # noqa: E402

from tests.test_shared_blocks import parse_shared_blocks  # noqa: E402

DRIVER = REPO_ROOT / "benchmarks" / "reproduce.py"
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}
TASKS = ("pendulum-swingup", "Pendulum-v1")  # a DMC15 task (the report shows the paper's cell) and a cheap gymnasium one
SWEEP = ["ce-table1", "--rows", "sac", "--tasks", *TASKS, "--seeds", "1", "2", "--total-timesteps", "600",
         "--learning-starts", "100", "--eval-every", "200", "--extra", "--eval-episodes 1 --batch-size 32 --log-every 100",
         "--checkpoint-every", "100", "--bootstrap-reps", "200", "--jobs", "2"]  # fmt: skip
FOLDERS = [f"sac/{task}/seed{seed}" for task in TASKS for seed in (1, 2)]


def driver(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(DRIVER), *SWEEP, "--out", str(out), *extra], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 180.0) -> None:
    """Until condition() holds, while the driver runs."""
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            stdout, stderr = process.communicate()
            raise AssertionError(f"the driver ended (exit {process.returncode}) before {what}:\n{stdout}\n{stderr}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def markers(folder: Path) -> list[str]:
    """`start` / `resume`: one per attempt of the run, from the driver's marker lines in its log."""
    return re.findall(r"^==> reproduce: (start|resume) ", (folder / "log.txt").read_text(), re.M)


def running_pids(out: Path) -> list[int]:
    pids = []
    for path in out.glob("**/running.json"):
        with contextlib.suppress(ValueError, OSError):
            pids.append(json.loads(path.read_text())["pid"])
    return pids


def processes_working_in(out: Path) -> set[int]:
    """The pids whose working directory is inside `out` (every run works in its own folder there)."""
    pids = set()
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if Path(os.readlink(proc / "cwd")).is_relative_to(out.resolve()):
                pids.add(int(proc.name))
    return pids


def test_cli_block_is_ce_sacs():
    """The copied `# --- shared: cli ---` block is ce_sac.py's, text for text (benchmarks/ is not scanned by
    test_shared_blocks.py)."""
    ours = parse_shared_blocks(DRIVER.read_text(), str(DRIVER))["cli"]
    assert ours == parse_shared_blocks((REPO_ROOT / "ce_sac.py").read_text(), "ce_sac.py")["cli"]


def test_aggregate_on_hand_worked_scores():
    """IQM = the mean of the middle 50% of all runs x tasks scores (rliable's 25% trimmed mean), and the mean.

    Row "a", 2 seeds x 4 tasks: [[0, 1, 2, 3], [4, 5, 6, 100]]. Sorted: 0 1 2 3 4 5 6 100; 8 scores, a
    quarter (2) cut at each end leaves 2 3 4 5: IQM = 14 / 4 = 3.5 (the outlier 100 is cut). The mean is
    121 / 8 = 15.125. Row "b": every score 7, so IQM = mean = 7 and every bootstrap resample gives 7: the
    interval is [7, 7]."""
    scores = {"a": np.array([[0.0, 1, 2, 3], [4, 5, 6, 100]]), "b": np.full((2, 4), 7.0)}
    result = reproduce.aggregate(scores, reps=500)
    iqm, mean = result["a"]["iqm"], result["a"]["mean"]
    assert iqm[0] == pytest.approx(3.5) and mean[0] == pytest.approx(15.125)
    assert iqm[1] <= iqm[0] <= iqm[2] and mean[1] <= mean[0] <= mean[2]
    assert mean[2] > iqm[2]  # the outlier stretches the mean's interval, not the IQM's
    assert result["b"] == {"iqm": (7.0, 7.0, 7.0), "mean": (7.0, 7.0, 7.0)}
    assert reproduce.aggregate(scores, reps=500) == result  # seeded: the same report twice


def test_paper_numbers_agree_across_the_papers_tables():
    """A typing check of PAPER: the paper repeats cells between its tables (Table 1's Replica and CE in
    Tables 6-9, CE 4 / Replica 4 of Table 7, Table 1's RND in Table 2); each copy must read the same."""
    t1 = reproduce.PAPER["ce-table1"]
    assert t1["CE"]["cheetah-run"] == (877.8, 4.1) and t1["SAC"]["hopper-hop"] == (148.2, 49.5)
    for table in ("ce-table6", "ce-table8", "ce-table9"):
        for row in ("Replica", "CE" if table != "ce-table9" else "K=20"):
            source = "CE" if row == "K=20" else row
            assert reproduce.PAPER[table][row] == {t: t1[source][t] for t in reproduce.ABLATION_TASKS}, (table, row)
    t7 = reproduce.PAPER["ce-table7"]
    assert t7["CE 4"] == {t: t1["CE"][t] for t in reproduce.ABLATION_TASKS}
    assert t7["Replica 4"] == {t: t1["Replica"][t] for t in reproduce.ABLATION_TASKS}
    assert reproduce.PAPER["ce-table2"]["RND"] == {t: t1["RND"][t] for t in reproduce.TABLE2_TASKS}
    assert reproduce.PAPER["mesa-table2"]["MADDPG"]["climb-multi-stage"] == (0.50, 0.00)
    for table in reproduce.TABLES.values():  # every row with a script has the paper's cells (Fig. 4: none exist)
        for row in table.rows:
            if row.script and row.default and table.key != "ce-fig4":
                assert set(reproduce.PAPER[table.key][row.name]) == set(table.tasks), (table.key, row.name)


def test_report_shows_the_papers_numbers_and_every_cell(tmp_path):
    """--report-only on a folder without runs: every cell is there (n = 0) with the paper's mean (std)."""
    out = tmp_path / "t6"
    result = reproduce.main(reproduce.Args(table="ce-table6", report_only=True, out=str(out)))
    text = Path(result["report"]).read_text()
    for row in reproduce.TABLES["ce-table6"].rows:
        for task in reproduce.ABLATION_TASKS:
            mean, std = reproduce.PAPER["ce-table6"][row.name][task]
            assert f"paper {mean:.1f} ({std:.1f})" in text
    assert text.count("—, n=0") == 6 * 4
    assert "Not started (120)" in text


def test_mesa_runs_follow_the_task_seed_scheme(capsys):
    """mesa-table2: seed s draws with task seed 100 + s, MESA once per seed, MADDPG once per test task; the
    test-task counts are the scripts' own (Appendix Table 1)."""
    from baselines import maddpg

    for column in reproduce.MESA_COLUMNS.values():
        env_id = column.flags.split()[1]
        assert column.num_test_tasks == maddpg.PAPER_DEFAULTS[env_id]["num_test_tasks"]
    reproduce.main(reproduce.Args(table="mesa-table2", tasks=("climb-multi-stage",), seeds=(3,), dry_run=True, out="x"))
    lines = capsys.readouterr().out.splitlines()
    mesa = [line for line in lines if "mesa_maddpg.py" in line]
    maddpg_runs = [line for line in lines if "baselines/maddpg.py" in line]
    assert len(mesa) == 1 and len(maddpg_runs) == 5
    assert all("--seed 3 --task-seed 103 --num-test-tasks 5" in line for line in mesa + maddpg_runs)
    assert [re.search(r"--test-task-index (\d)", line)[1] for line in maddpg_runs] == list("01234")
    assert reproduce.k1_only_return("climb-one-step", 3, 5) in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@pytest.mark.parametrize("argv, words", [
    (["nope"], ["TABLE nope", "ce-table1", "mesa-table2"]),
    ([], ["TABLE (missing)", "ce-table1"]),
    (["ce-table1", "--rows", "ce", "ppo"], ["--rows ppo", "sac, replica, a2c"]),
    (["ce-table6", "--tasks", "cheetah-sprint"], ["--tasks cheetah-sprint", "fish-swim", "pendulum-swingup"]),
    (["mesa-table2", "--tasks", "mpe-climb"], ["--tasks mpe-climb", "climb-one-step", "mpe-2a5l", "swimmer"]),
    (["ce-table1", "--launcher", "pbs"], ["--launcher pbs", "local, slurm"]),
    (["ce-table1", "--slurm-cluster", "x"], ["--slurm-cluster x", "slurm, local"]),
    (["ce-table1", "--extra=--no-such-flag 3"], ["--no-such-flag", "baselines/sac.py"]),
    (["ce-table1", "--extra=--seed 3"], ["--seed", "set by this driver"]),
    (["ce-table1", "--extra=ppo: --knn-k 5"], ["ppo is not a row", "sac, replica"]),
    (["ce-table1", "--ceiling"], ["--ceiling", "mesa-table2"]),
    (["ce-table1", "--jobs", "-1"], ["--jobs -1", ">= 0"]),
    (["mesa-table2", "--rows", "mesa", "--total-timesteps", "100", "--extra=mesa: --no-such-flag"], ["--no-such-flag", "mesa_maddpg.py"]),
])  # fmt: skip
def test_bad_input_is_one_line(monkeypatch, capsys, argv, words):
    """Each case in this process through the driver's `cli`; --dry-run, so that a case that wrongly passes
    validation lists commands instead of starting hours of runs."""
    monkeypatch.setattr(sys, "argv", ["reproduce.py", *argv, "--dry-run"])
    with pytest.raises(SystemExit) as stop:
        reproduce.cli(reproduce.main, reproduce.Args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    for word in words:
        assert word in err


def test_a_table_whose_script_is_missing_is_refused(monkeypatch, capsys):
    """ce-fig4 is listed before its scripts exist, and refused in one line naming the missing one."""
    scripts = {row.script for row in reproduce.TABLES["ce-fig4"].rows}
    monkeypatch.setattr(reproduce, "ROOT", REPO_ROOT / "no-such-checkout")  # as if no script existed yet
    monkeypatch.setattr(sys, "argv", ["reproduce.py", "ce-fig4", "--dry-run"])
    with pytest.raises(SystemExit) as stop:
        reproduce.cli(reproduce.main, reproduce.Args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "do not exist yet" in err and all(script in err for script in scripts)


def test_bad_input_exit_code_of_the_process():
    done = subprocess.run([sys.executable, str(DRIVER), "ce-table1", "--rows", "nope"], env=ENV, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == "error: --rows nope: not a row of ce-table1; valid: sac, replica, a2c, diayn, rnd, dice, sunrise, ce\n"


def test_local_sweep_stopped_killed_and_resumed(tmp_path):
    out = tmp_path / "sweep"
    # 1. Ctrl-C once a run has finished: every other run checkpoints and stops; one line, exit 130
    process = driver(out)
    wait_for(lambda: any((out / f / "result.json").exists() for f in FOLDERS), process, "a first finished run")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("interrupted: "), stderr
    finished = {f: (out / f / "result.json").stat().st_mtime_ns for f in FOLDERS if (out / f / "result.json").exists()}
    assert not running_pids(out)

    # 2. restarted, then SIGKILL of the driver and its runs once a run has written a checkpoint in this try
    restart = time.time()
    process = driver(out)
    wait_for(lambda: running_pids(out) and any(p.stat().st_mtime > restart for p in out.glob("**/checkpoint.pt")),
             process, "a checkpoint of the second try")
    process.kill()  # the driver first, so that it starts no run after the list below is taken
    process.communicate()
    for pid in set(running_pids(out)) | processes_working_in(out):  # (a run started just before the kill has no running.json yet)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    # 3. the same command finishes the sweep: finished runs untouched, every cell in the report
    done = subprocess.run([sys.executable, str(DRIVER), *SWEEP, "--out", str(out)], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for f in FOLDERS:
        result = json.loads((out / f / "result.json").read_text())
        assert result["metric"] == "eval_return" and np.isfinite(result["score"])
        if f in finished:  # not run again
            assert (out / f / "result.json").stat().st_mtime_ns == finished[f] and markers(out / f) == ["start"]
    assert any("resume" in markers(out / f) for f in FOLDERS), "no run resumed from a checkpoint"
    report = (out / "report.md").read_text()
    assert "| pendulum-swingup | " in report and "| Pendulum-v1 | " in report and report.count("n=2") == 2
    assert "paper 652.1 (298.6)" in report  # SAC's pendulum-swingup cell of Table 1
    assert "| SAC | " in report and "2 x 2 |" in report  # the IQM row over 2 seeds x 2 tasks
    assert (out / "curves.png").stat().st_size > 0 and (out / "aggregate.png").stat().st_size > 0
    # 4. once more: nothing to do
    again = subprocess.run([sys.executable, str(DRIVER), *SWEEP, "--out", str(out), "--dry-run"], env=ENV,
                           capture_output=True, text=True)
    assert again.stdout.strip().splitlines() == ["# 4 runs: 4 done, 0 to resume, 0 to start"]


def test_slurm_path_with_submitits_local_executor_requeues_a_preempted_run(tmp_path):
    """--launcher slurm --slurm-cluster local: one submitit job per run. One job is preempted (SIGUSR2 to the
    job's process, what SLURM sends before a timeout or a preemption): its checkpoint() stops the run with a
    checkpoint and requeues it, and the requeued job resumes it."""
    out = tmp_path / "slurm"
    process = driver(out, "--launcher", "slurm", "--slurm-cluster", "local", "--slurm-gpus-per-run", "0", "--wait")
    target = out / FOLDERS[0]
    wait_for(lambda: list(target.glob("runs/*/checkpoint.pt")) and (target / "running.json").exists(), process, "a checkpoint")
    pid = json.loads((target / "running.json").read_text())["pid"]
    job_process = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the run's parent
    os.kill(job_process, signal.SIGUSR2)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stdout + stderr
    assert markers(target) == ["start", "resume"]
    for f in FOLDERS:
        assert np.isfinite(json.loads((out / f / "result.json").read_text())["score"])
    report = (out / "report.md").read_text()
    assert report.count("n=2") == 2 and "paper 652.1 (298.6)" in report


def test_curve_of_a_resumed_run_drops_what_came_after_its_checkpoint(tmp_path, caplog):
    """A run killed at step 45 after a checkpoint at 20 resumes (SummaryWriter's purge_step, as the scripts do)
    and has logged 30 again so far: the curve is 10, 20 and the resumed run's 30 (the first attempt's 30 and 40
    are purged), and reading it logs no warning about the purge."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir = tmp_path / "runs" / "task__drq__1__0"
    run_dir.mkdir(parents=True)
    for purge_step, points in ((None, {10: 1.0, 20: 2.0, 30: 3.0, 40: 4.0}), (21, {30: 30.0})):
        writer = SummaryWriter(str(run_dir), purge_step=purge_step)
        for step, value in points.items():
            writer.add_scalar("eval/return", value, step)
        writer.close()
        time.sleep(1.1)  # event files are read in the order of their names, which start with the second of writing
    steps, returns = reproduce.read_curve(tmp_path, None)
    assert steps.tolist() == [10, 20, 30] and returns.tolist() == [1.0, 2.0, 30.0]
    assert not [r for r in caplog.records if r.name.startswith("tensorboard")]
