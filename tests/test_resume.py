"""Checkpoints and exact resume of the CE scripts (`--checkpoint-every`, `--resume`).

A run killed with SIGKILL at some moment and resumed must end exactly as the same run never
interrupted: the same `eval_return=` line and the same TensorBoard scalars (all but the
wall-clock `charts/SPS`). The environments are rebuilt mid-episode (DMC episodes are 1000
steps; the kills land inside one), so these tests also hold the replay of an episode's actions.
A kill while a checkpoint is being written leaves a `checkpoint.pt.tmp` beside the previous,
whole checkpoint; resuming must not care. Bad checkpoints end in one line and exit 2.

Budget: about a minute (a few short runs of each script on cartpole-swingup, one thread).
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ce_sac
from baselines import sac

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"sac": (sac, REPO_ROOT / "baselines" / "sac.py"), "ce": (ce_sac, REPO_ROOT / "ce_sac.py")}
SUBPROCESS_ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}
FLAGS = {  # CE with every collaboration on, so that Eq. 5's and the softmax evaluation's generators are covered too
    "sac": ["--env-id", "cartpole-swingup", "--total-timesteps", "1500", "--learning-starts", "300", "--batch-size", "32",
            "--eval-every", "500", "--eval-episodes", "2", "--log-every", "100", "--checkpoint-every", "400", "--no-cuda"],
    "ce": ["--env-id", "cartpole-swingup", "--num-agents", "2", "--total-timesteps", "1500", "--learning-starts", "300",
           "--batch-size", "32", "--eval-every", "500", "--eval-episodes", "2", "--log-every", "100",
           "--checkpoint-every", "400", "--col-unroll", "--col-eval", "--memory-size", "50", "--no-cuda"],
}  # fmt: skip


def run_cli(script: Path, cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=SUBPROCESS_ENV, capture_output=True,
                          text=True, timeout=timeout)


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run folder (all its event files, as TensorBoard reads them), but the wall-clock SPS."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"] if tag != "charts/SPS"}


def kill_after_first_checkpoint(script: Path, cwd: Path, flags: list[str], delay: float) -> Path:
    """Start a run, SIGKILL it `delay` seconds after its first checkpoint; return its run folder."""
    process = subprocess.Popen([sys.executable, str(script), *flags], cwd=cwd, env=SUBPROCESS_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(cwd.glob("runs/*/checkpoint.pt")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    process.kill()
    process.wait()
    (run_dir,) = cwd.glob("runs/*")
    assert not (run_dir / "result.json").exists(), "the run finished before it was killed: raise its budget"
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Each script's run never interrupted: its last line and scalars."""
    out = {}
    for name, (_, script) in SCRIPTS.items():
        cwd = tmp_path_factory.mktemp(f"{name}_uninterrupted")
        result = run_cli(script, cwd, *FLAGS[name])
        assert result.returncode == 0, result.stderr[-2000:]
        (run_dir,) = cwd.glob("runs/*")
        out[name] = (result.stdout.strip().splitlines()[-1], scalars(run_dir))
    return out


@pytest.mark.parametrize("name", ["sac", "ce"])
def test_kill_9_between_checkpoints_then_resume_is_bit_for_bit(name, uninterrupted, tmp_path):
    _, script = SCRIPTS[name]
    run_dir = kill_after_first_checkpoint(script, tmp_path, FLAGS[name], delay=random.Random(name).uniform(1.0, 3.0))
    step = torch.load(run_dir / "checkpoint.pt", weights_only=True)["loop"]["global_step"]
    assert 0 < step < 1500
    result = run_cli(script, tmp_path, *FLAGS[name], "--resume")  # alone: the newest interrupted run of this command
    assert result.returncode == 0, result.stderr[-2000:]
    last_line, reference = uninterrupted[name]
    assert result.stdout.strip().splitlines()[-1] == last_line
    assert scalars(run_dir) == reference
    assert (run_dir / "result.json").exists() and len(list(tmp_path.glob("runs/*"))) == 1  # its own folder


@pytest.mark.parametrize("name", ["sac", "ce"])
def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one(name, uninterrupted, tmp_path):
    """A kill while saving leaves a partial `checkpoint.pt.tmp` (save_file writes there, then renames):
    made here by hand beside a whole checkpoint; the resume reads the whole one and ends exactly."""
    _, script = SCRIPTS[name]
    run_dir = kill_after_first_checkpoint(script, tmp_path, FLAGS[name], delay=0.0)
    whole = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt.tmp").write_bytes(whole[: len(whole) // 3])
    result = run_cli(script, tmp_path, *FLAGS[name], "--resume", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    last_line, reference = uninterrupted[name]
    assert result.stdout.strip().splitlines()[-1] == last_line
    assert scalars(run_dir) == reference


def test_ctrl_c_checkpoint_resumes_bit_for_bit(uninterrupted, tmp_path):
    """Ctrl-C writes a resumable checkpoint at the step it stops."""
    _, script = SCRIPTS["ce"]
    flags = [f for f in FLAGS["ce"]]
    flags[flags.index("--checkpoint-every") + 1] = "0"  # no periodic checkpoint: only Ctrl-C's
    process = subprocess.Popen([sys.executable, str(script), *flags], cwd=tmp_path, env=SUBPROCESS_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/*/events.out.tfevents.*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(4.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    result = run_cli(script, tmp_path, *flags, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = tmp_path.glob("runs/*")
    last_line, reference = uninterrupted["ce"]
    assert result.stdout.strip().splitlines()[-1] == last_line
    assert scalars(run_dir) == reference


# --- bad checkpoints: one line, exit 2 ---


@pytest.fixture(scope="module")
def sac_checkpoint(tmp_path_factory) -> Path:
    """A real, resumable checkpoint of baselines/sac.py (its run killed before it finished)."""
    cwd = tmp_path_factory.mktemp("sac_checkpoint")
    return kill_after_first_checkpoint(SCRIPTS["sac"][1], cwd, FLAGS["sac"], delay=0.0) / "checkpoint.pt"


class Evil:
    """A pickle that would create a file when unpickled with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def bad_checkpoints(tmp_path: Path, sac_checkpoint: Path) -> dict[str, tuple[Path, list[str]]]:
    """{case: (checkpoint path, what the error line must name)}."""
    data = sac_checkpoint.read_bytes()
    files = {
        "empty": b"",
        "random bytes": os.urandom(4096),
        "truncated": data[: len(data) // 2],
        "text": b"not a checkpoint\n",
    }
    cases = {}
    for case, content in files.items():
        path = tmp_path / f"{case.replace(' ', '_')}.pt"
        path.write_bytes(content)
        cases[case] = (path, ["--resume", str(path), "not a readable torch file"])
    torch.save({"actor": {}}, tmp_path / "foreign.pt")
    cases["foreign dict"] = (tmp_path / "foreign.pt", ["--resume", "not a checkpoint of"])
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    cases["a tensor"] = (tmp_path / "tensor.pt", ["--resume", "not a checkpoint of"])
    torch.save({"x": Evil(tmp_path / "PWNED")}, tmp_path / "evil.pt")
    cases["malicious pickle"] = (tmp_path / "evil.pt", ["--resume", "not a readable torch file"])
    cases["missing"] = (tmp_path / "nope.pt", ["--resume", "no checkpoint there"])
    return cases


@pytest.mark.parametrize("case", ["empty", "random bytes", "truncated", "text", "foreign dict", "a tensor",
                                  "malicious pickle", "missing"])  # fmt: skip
def test_bad_checkpoint_is_one_line_and_exit_2(case, sac_checkpoint, tmp_path):
    path, must_name = bad_checkpoints(tmp_path, sac_checkpoint)[case]
    result = run_cli(SCRIPTS["sac"][1], tmp_path, *FLAGS["sac"], "--resume", str(path))
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and all(text in line for text in must_name), line
    assert not (tmp_path / "PWNED").exists(), "loading the checkpoint ran code from it"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("change, must_name", [
    (["--learning-rate", "1e-3"], ["--learning-rate 0.0003", "same settings"]),
    (["--seed", "2"], ["--seed 1"]),
    (["--env-id", "walker-walk"], ["--env-id cartpole-swingup"]),
])  # fmt: skip
def test_mismatched_checkpoint_is_one_line_and_exit_2(change, must_name, sac_checkpoint, tmp_path):
    result = run_cli(SCRIPTS["sac"][1], tmp_path, *FLAGS["sac"], *change, "--resume", str(sac_checkpoint))
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --resume ") and all(text in line for text in must_name), line


def test_checkpoint_of_another_script_is_refused(sac_checkpoint, tmp_path):
    result = run_cli(SCRIPTS["ce"][1], tmp_path, *FLAGS["ce"], "--resume", str(sac_checkpoint))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "not a checkpoint of ce_sac.py" in line, line


def test_resume_without_an_interrupted_run_is_refused(tmp_path):
    result = run_cli(SCRIPTS["sac"][1], tmp_path, *FLAGS["sac"], "--resume")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --resume: no interrupted run of this command under runs/cartpole-swingup__sac__1__"), line
