"""Checkpoints and exact resume of mesa_maddpg.py and baselines/maddpg.py (`--checkpoint-every`, `--resume`).

A run killed with SIGKILL and resumed must end exactly as the same run never interrupted: the
same `test_return=` line and the same TensorBoard scalars (all but the wall-clock `charts/SPS`),
step for step. Both scripts checkpoint between two episodes (every env reset is seeded by the
episode index, so no env state is needed). MESA's checkpoint also says where in its nested phases
the run stood (collect task i, explorer e, test task j), and its tags count steps per phase, per
policy or per task, so a resume cuts the event files back to their checkpoint-time sizes instead of
TensorBoard's purge by step. A kill while a checkpoint is being written leaves a partial
`checkpoint.pt.tmp` beside the previous, whole one; resuming must not care. Bad checkpoints end in
one line and exit 2.

Each chain below kills a run, resumes it, kills the resumed run and resumes again, so a resume of
a resumed run (two event files to cut back) is covered too.
Budget: about a minute on 2 cores (10 short runs of the command line on a 2-stage climb game, and
a few in-process runs).
"""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"mesa": ROOT / "mesa_maddpg.py", "maddpg": ROOT / "baselines" / "maddpg.py"}
SUBPROCESS_ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}
COMMON = ["--env-id", "climb-multi-stage", "--stages", "2", "--learning-starts", "40", "--train-frequency", "4",
          "--batch-size", "4", "--eval-episodes", "1", "--eval-frequency", "40", "--log-frequency", "20",
          "--checkpoint-every", "60", "--no-cuda"]  # fmt: skip
FLAGS = {  # a few seconds each; MESA: 2 collection tasks, 2 exploration policies, 2 test tasks, a checkpoint every 60 steps
    "mesa": [*COMMON, "--num-train-tasks", "2", "--num-test-tasks", "2", "--collect-steps", "200", "--meta-train-steps", "400",
             "--num-exploration-policies", "2", "--total-timesteps", "200"],
    "maddpg": [*COMMON, "--total-timesteps", "400"],
}  # fmt: skip


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULES = {"mesa": load(SCRIPTS["mesa"], "mesa_maddpg"), "maddpg": load(SCRIPTS["maddpg"], "baselines_maddpg")}


@pytest.fixture(autouse=True)
def isolated():
    """cli's Ctrl-C handler and stop flag (in-process runs) put back after each test."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)
    for module in MODULES.values():
        module.STOP_REQUESTED[0] = False


def run_cli(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS[name]), *args], cwd=cwd, env=SUBPROCESS_ENV, capture_output=True,
                          text=True, timeout=300)


def start(name: str, cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPTS[name]), *args], cwd=cwd, env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_line(stdout: str) -> str:
    return stdout.strip().splitlines()[-1]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run folder (all its event files, as TensorBoard reads them), but the wall-clock SPS."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"] if tag != "charts/SPS"}


def kill_after_checkpoint(process: subprocess.Popen, cwd: Path, phase: str | None, delay: float) -> Path:
    """SIGKILL `process` `delay` seconds after it writes a new checkpoint (MESA: one in `phase`, "collect",
    "explore" or "test"); return its run folder, with the checkpoint the resume will read."""
    written = {p: p.stat().st_mtime_ns for p in cwd.glob("runs/*/checkpoint.pt")}  # an earlier segment's
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline:
        path = next(cwd.glob("runs/*/checkpoint.pt"), None)
        if path is not None and written.get(path) != path.stat().st_mtime_ns:
            written[path] = path.stat().st_mtime_ns
            if phase is None or torch.load(path, weights_only=True)["at"][0] == phase:
                break
        time.sleep(0.02)
    time.sleep(delay)
    process.kill()
    process.wait()
    (run_dir,) = cwd.glob("runs/*")
    assert not (run_dir / "result.json").exists(), "the run finished before it was killed: raise its budget"
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """uninterrupted(name) -> (last line, scalars) of the script's run never interrupted. Both runs start at once, in
    the background (one core each), while the tests kill and resume theirs; each is waited for when first needed."""
    cwds = {name: tmp_path_factory.mktemp(f"{name}_uninterrupted") for name in SCRIPTS}
    processes = {name: start(name, cwds[name], *FLAGS[name]) for name in SCRIPTS}
    results = {}

    def result(name: str) -> tuple[str, dict]:
        if name not in results:
            stdout, stderr = processes[name].communicate(timeout=300)
            assert processes[name].returncode == 0, stderr[-2000:]
            (run_dir,) = cwds[name].glob("runs/*")
            results[name] = (last_line(stdout), scalars(run_dir))
        return results[name]

    yield result
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def test_mesa_killed_in_meta_training_and_in_meta_testing_resumes_bit_for_bit(uninterrupted, tmp_path):
    # 1. kill -9 between two checkpoints of an exploration policy's training; `--resume` alone finds the run
    run_dir = kill_after_checkpoint(start("mesa", tmp_path, *FLAGS["mesa"]), tmp_path, "explore", delay=0.1)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["at"][0] == "explore"
    # 2. the resumed run killed just after a checkpoint of meta-testing, as if while writing the next one
    process = start("mesa", tmp_path, *FLAGS["mesa"], "--resume")
    kill_after_checkpoint(process, tmp_path, "test", delay=0.0)
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["at"][0] == "test" and checkpoint["resumable"]
    whole = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt.tmp").write_bytes(whole[: len(whole) // 3])
    # 3. resumed from the run folder: the same last line and scalars as the run never interrupted
    result = run_cli("mesa", tmp_path, *FLAGS["mesa"], "--resume", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    line, reference = uninterrupted("mesa")
    assert last_line(result.stdout) == line
    assert scalars(run_dir) == reference
    assert (run_dir / "result.json").exists() and len(list(tmp_path.glob("runs/*"))) == 1  # its own folder


def test_maddpg_killed_twice_resumes_bit_for_bit(uninterrupted, tmp_path):
    run_dir = kill_after_checkpoint(start("maddpg", tmp_path, *FLAGS["maddpg"]), tmp_path, None, delay=0.15)
    step = torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"]
    process = start("maddpg", tmp_path, *FLAGS["maddpg"], "--resume")
    kill_after_checkpoint(process, tmp_path, None, delay=0.0)
    assert step < torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] < 400
    whole = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt.tmp").write_bytes(whole[: len(whole) // 3])
    result = run_cli("maddpg", tmp_path, *FLAGS["maddpg"], "--resume", str(run_dir / "checkpoint.pt"))
    assert result.returncode == 0, result.stderr[-2000:]
    line, reference = uninterrupted("maddpg")
    assert last_line(result.stdout) == line
    assert scalars(run_dir) == reference


def test_ctrl_c_checkpoint_resumes_bit_for_bit(uninterrupted, tmp_path):
    """Ctrl-C writes a resumable checkpoint at the episode it stops after (no periodic one here)."""
    flags = [*FLAGS["mesa"], "--checkpoint-every", "0"]
    process = start("mesa", tmp_path, *flags)
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/*/events.out.tfevents.*")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into meta-training: where exactly does not matter, the resume must be exact anywhere
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.startswith("interrupted: at step ") and "checkpoint in runs/" in stderr, stderr
    result = run_cli("mesa", tmp_path, *flags, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = tmp_path.glob("runs/*")
    line, reference = uninterrupted("mesa")
    assert last_line(result.stdout) == line
    assert scalars(run_dir) == reference


# --- in-process runs (fast): a stop while collecting M*, and the bad checkpoints ---


def run_in_process(name: str, argv: list[str], cwd: Path, monkeypatch, capsys, stop: bool = False):
    """cli(main, Args) as the command line runs it, in `cwd` -> (exit code, stdout, stderr); `stop`: as after a
    Ctrl-C before the first episode, so the run stops after it with a resumable checkpoint."""
    module = MODULES[name]
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS[name]), *argv])
    module.STOP_REQUESTED[0] = stop
    try:
        module.cli(module.main, module.Args)
        code = 0
    except SystemExit as exit:
        code = exit.code
    module.STOP_REQUESTED[0] = False
    out, err = capsys.readouterr()
    return code, out, err


class NoCapture:
    """capsys's readouterr for a module-scoped fixture (which has no capsys): the output is left to pytest."""

    def readouterr(self):
        return "", ""


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """{script: its run folder}, each run stopped (as by Ctrl-C) after its first episode: a resumable checkpoint."""
    folders = {}
    handler = signal.getsignal(signal.SIGINT)
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in SCRIPTS:
            cwd = tmp_path_factory.mktemp(f"{name}_stopped")
            code, _, _ = run_in_process(name, FLAGS[name], cwd, monkeypatch, NoCapture(), stop=True)
            assert code == 130
            (folders[name],) = cwd.glob("runs/*")
    signal.signal(signal.SIGINT, handler)
    return folders


def test_stop_while_collecting_mstar_resumes_bit_for_bit(uninterrupted, tmp_path, monkeypatch, capsys):
    # the collection phase's checkpoint holds M*'s pairs so far (as one tensor per list)
    code, _, err = run_in_process("mesa", FLAGS["mesa"], tmp_path, monkeypatch, capsys, stop=True)
    assert code == 130 and "of collect task 1/2; checkpoint in runs/" in err, err
    (run_dir,) = tmp_path.glob("runs/*")
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["at"] == ("collect", 0) and checkpoint["resumable"] and len(checkpoint["carried"]["mstar"][0]) == 1
    code, out, err = run_in_process("mesa", [*FLAGS["mesa"], "--resume"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    line, reference = uninterrupted("mesa")  # the command line's run: in-process runs are the same to the bit
    assert last_line(out) == line
    assert scalars(run_dir) == reference


class WritesMarker:
    """A pickle that creates a file when it is unpickled: what weights_only=False would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def bad_checkpoint(kind: str, good: Path, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind.replace(' ', '_')}.pt"
    data = good.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "foreign dict":
        torch.save({"actor": {}, "step": 3}, path)
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "malicious pickle":
        torch.save({"script": "mesa_maddpg.py", "x": WritesMarker(tmp_path / "marker")}, path)
    elif kind == "missing":
        pass
    else:
        raise ValueError(kind)
    return path


BAD = {"empty": "not a readable torch file", "random bytes": "not a readable torch file",
       "truncated": "not a readable torch file", "text": "not a readable torch file",
       "foreign dict": "not a checkpoint of", "tensor": "not a checkpoint of",
       "malicious pickle": "not a readable torch file", "missing": "no checkpoint there"}  # fmt: skip


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("kind", BAD)
def test_bad_checkpoint_is_one_line_and_exit_2(name, kind, stopped, tmp_path, monkeypatch, capsys):
    path = bad_checkpoint(kind, stopped[name] / "checkpoint.pt", tmp_path)
    code, out, err = run_in_process(name, [*FLAGS[name], "--resume", str(path)], tmp_path, monkeypatch, capsys)
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: --resume {path}") and BAD[kind] in line, line
    assert not (tmp_path / "marker").exists(), "loading the checkpoint ran code from it"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name, change, must_name", [
    ("mesa", ["--learning-rate", "1e-3"], ["--learning-rate 0.005", "same settings"]),  # Table 1's, resolved
    ("mesa", ["--num-exploration-policies", "3"], ["--num-exploration-policies 2"]),
    ("mesa", ["--seed", "2"], ["--seed 1"]),
    ("maddpg", ["--test-task-index", "1"], ["--test-task-index 0"]),
    ("maddpg", ["--stages", "3"], ["--stages 2"]),
])  # fmt: skip
def test_mismatched_settings_are_one_line_and_exit_2(name, change, must_name, stopped, tmp_path, monkeypatch, capsys):
    argv = [*FLAGS[name], *change, "--resume", str(stopped[name])]
    code, _, err = run_in_process(name, argv, tmp_path, monkeypatch, capsys)
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: --resume ") and all(text in line for text in must_name), line


@pytest.mark.parametrize("name, other", [("mesa", "maddpg"), ("maddpg", "mesa")])
def test_checkpoint_of_the_other_script_is_refused(name, other, stopped, tmp_path, monkeypatch, capsys):
    code, _, err = run_in_process(name, [*FLAGS[name], "--resume", str(stopped[other])], tmp_path, monkeypatch, capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert f"not a checkpoint of {MODULES[name].SCRIPT}" in line, line


def test_checkpoint_of_a_non_finite_stop_is_refused(tmp_path, monkeypatch, capsys):
    # a learning rate of 1e30 takes the networks to NaN: that checkpoint is for inspection, never resumed
    argv = [*FLAGS["maddpg"], "--learning-rate", "1e30", "--log-frequency", "1"]
    code, _, err = run_in_process("maddpg", argv, tmp_path, monkeypatch, capsys)
    assert code == 3, err
    code, _, err = run_in_process("maddpg", [*argv, "--resume"], tmp_path, monkeypatch, capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "written when a non-finite value stopped the run" in line, line


@pytest.mark.parametrize("name", SCRIPTS)
def test_resume_without_an_interrupted_run_is_refused(name, tmp_path, monkeypatch, capsys):
    code, _, err = run_in_process(name, [*FLAGS[name], "--resume"], tmp_path, monkeypatch, capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: --resume: no interrupted run of this command under runs/climb-multi-stage__"), line


@pytest.mark.parametrize("name", SCRIPTS)
def test_checkpoint_every_must_be_a_non_negative_integer(name, tmp_path, monkeypatch, capsys):
    code, _, err = run_in_process(name, [*FLAGS[name], "--checkpoint-every", "-1"], tmp_path, monkeypatch, capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("error: --checkpoint-every -1: must be an integer >= 0"), line
