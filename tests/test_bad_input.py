"""Bad input to the CE scripts (baselines/sac.py, ce_sac.py) as a user makes it on the command line.

Every case must end with exit code 2 (the project's one code for bad input, the same as tyro's
own parse errors), exactly one line on stderr that starts with `error:` and names the flag, no
traceback, and no run folder. Most cases run in this process through the scripts' own `cli`
entry point (a few ms each, once the first DMC environment is built); a few run as real
subprocesses to check the process's exit code. Also here: a NaN during training (exit 3, one
line naming the quantity and the step, a checkpoint to inspect) and Ctrl-C (exit 130, one line).
The MESA scripts' cases are in test_bad_input_mesa.py.
"""

import os
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
# A valid short run; each case replaces some of these flags. Should a case wrongly pass validation,
# it trains for 400 steps and the test fails on the missing exit instead of running for hours.
BASE = {"--env-id": "cartpole-swingup", "--total-timesteps": "400", "--learning-starts": "200", "--eval-episodes": "1",
        "--no-cuda": None}  # fmt: skip

BOTH = [
    ({"--env-id": "cheetah-sprint"}, ["--env-id", "cheetah-run", "walker-run", "Hopper-v5"]),
    ({"--env-id": "CartPole-v1"}, ["--env-id", "Discrete", "continuous"]),
    ({"--seed": "-1"}, ["--seed", ">= 0"]),
    ({"--seed": str(2**31)}, ["--seed", "<= 2147483647"]),
    ({"--torch-threads": "0"}, ["--torch-threads", ">= 1"]),
    ({"--total-timesteps": "0"}, ["--total-timesteps", ">= 1"]),
    ({"--total-timesteps": "-1"}, ["--total-timesteps"]),
    ({"--learning-starts": "-1"}, ["--learning-starts", ">= 0"]),
    ({"--learning-starts": "400"}, ["--learning-starts", "--total-timesteps 400"]),  # no update before the end
    ({"--learning-starts": "100000"}, ["--learning-starts", "no learning step"]),
    ({"--buffer-size": "0"}, ["--buffer-size"]),
    ({"--batch-size": "0"}, ["--batch-size", ">= 1"]),
    ({"--utd": "0"}, ["--utd"]),
    ({"--eval-every": "0"}, ["--eval-every"]),
    ({"--eval-episodes": "0"}, ["--eval-episodes"]),
    ({"--log-every": "-5"}, ["--log-every"]),
    ({"--gamma": "inf"}, ["--gamma", "<= 1"]),
    ({"--gamma": "nan"}, ["--gamma"]),
    ({"--gamma": "-0.1"}, ["--gamma", ">= 0"]),
    ({"--tau": "0"}, ["--tau", "> 0"]),
    ({"--tau": "1.5"}, ["--tau", "<= 1"]),
    ({"--learning-rate": "inf"}, ["--learning-rate", "finite"]),
    ({"--learning-rate": "nan"}, ["--learning-rate"]),
    ({"--learning-rate": "0"}, ["--learning-rate", "> 0"]),
    ({"--learning-rate": "-3e-4"}, ["--learning-rate"]),
    ({"--init-temperature": "0"}, ["--init-temperature", "> 0"]),
    ({"--init-temperature": "inf"}, ["--init-temperature"]),
    ({"--target-entropy-scale": "nan"}, ["--target-entropy-scale", "finite"]),
    ({"--target-entropy-scale": "-inf"}, ["--target-entropy-scale"]),
    ({"--max-grad-norm": "0"}, ["--max-grad-norm"]),
    ({"--max-grad-norm": "nan"}, ["--max-grad-norm"]),
]
CE_ONLY = [
    ({"--num-agents": "0"}, ["--num-agents", ">= 1"]),
    ({"--num-agents": "-2"}, ["--num-agents"]),
    ({"--buffer-size": "3"}, ["--buffer-size", "--num-agents 4"]),
    ({"--intrinsic-coef": "nan"}, ["--intrinsic-coef", "finite"]),
    ({"--intrinsic-coef": "-0.2"}, ["--intrinsic-coef", ">= 0"]),
    ({"--intrinsic-coef": "inf"}, ["--intrinsic-coef"]),
    ({"--ego-weight": "1.5"}, ["--ego-weight", "<= 1"]),
    ({"--ego-weight": "nan"}, ["--ego-weight"]),
    ({"--unroll-eps": "-0.1"}, ["--unroll-eps", ">= 0"]),
    ({"--unroll-samples": "0"}, ["--unroll-samples"]),
    ({"--knn-k": "0"}, ["--knn-k"]),
    ({"--memory-size": "0"}, ["--memory-size"]),
    ({"--memory-skip": "0"}, ["--memory-skip"]),
    ({"--positive-horizon": "0"}, ["--positive-horizon"]),
    ({"--qclassifier-horizon": "0"}, ["--qclassifier-horizon"]),
    ({"--encoder-dim": "0"}, ["--encoder-dim"]),
    ({"--contrastive-temperature": "0"}, ["--contrastive-temperature", "> 0"]),
    ({"--contrastive-temperature": "nan"}, ["--contrastive-temperature"]),
    ({"--softmax-temperature": "-1"}, ["--softmax-temperature"]),
    ({"--softmax-temperature": "inf"}, ["--softmax-temperature"]),
    ({"--col-eval": None, "--eval-mode": "qclassifier"}, ["--col-eval", "--eval-mode"]),
]
CASES = [("sac", *c) for c in BOTH] + [("ce", *c) for c in BOTH + CE_ONLY]


def argv(flags: dict) -> list[str]:
    merged = {**BASE, **flags}
    return [part for flag, value in merged.items() for part in ([flag] if value is None else [flag, value])]


@pytest.fixture
def in_process(monkeypatch, capsys, tmp_path):
    """Run a script's `cli` entry point here, as `python script.py ARGS` would: (exit code, stderr lines)."""
    monkeypatch.chdir(tmp_path)
    sigint = signal.getsignal(signal.SIGINT)  # `cli` installs its Ctrl-C handler: put pytest's back

    def run(module, args: list[str]) -> tuple[int, list[str]]:
        monkeypatch.setattr(sys, "argv", [module.__file__, *args])
        capsys.readouterr()
        try:
            with pytest.raises(SystemExit) as exit_info:
                module.cli(module.main, module.Args)
        finally:
            signal.signal(signal.SIGINT, sigint)
        return exit_info.value.code, capsys.readouterr().err.strip().splitlines()

    return run


@pytest.mark.parametrize("name, flags, must_name", CASES, ids=[f"{n}{' '.join(argv(f)[len(argv({})):])}" for n, f, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(name, flags, must_name, in_process, tmp_path):
    module, _ = SCRIPTS[name]
    code, lines = in_process(module, argv(flags))
    assert code == module.EXIT_BAD_INPUT == 2
    assert len(lines) == 1, f"stderr has {len(lines)} lines: {lines}"
    assert lines[0].startswith("error: "), lines[0]
    for text in must_name:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert not (tmp_path / "runs").exists(), "a run folder was created for a run that cannot start"


@pytest.mark.parametrize("name", ["sac", "ce"])
def test_tyro_parse_errors_exit_2_without_traceback(name, tmp_path):
    """A value of the wrong type or an unknown choice is tyro's own error (a box on stderr), with
    the same exit code as ours."""
    _, script = SCRIPTS[name]
    for bad in [["--batch-size", "1.5"], ["--seed", "one"], ["--no-such-flag"]] + ([["--eval-mode", "best"]] if name == "ce" else []):
        result = subprocess.run([sys.executable, str(script), *bad], cwd=tmp_path, env=SUBPROCESS_ENV,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (bad, result.stderr)
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["sac", "ce"])
def test_real_process_exit_code_and_one_line(name, tmp_path):
    _, script = SCRIPTS[name]
    result = subprocess.run([sys.executable, str(script), *argv({"--learning-rate": "nan"})], cwd=tmp_path,
                            env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --learning-rate nan: must be a finite number > 0"
    assert result.stdout == ""


@pytest.mark.parametrize("name", ["sac", "ce"])
def test_non_finite_loss_stops_with_one_line_exit_3_and_a_checkpoint(name, tmp_path):
    """A learning rate of 1e30 is valid input that blows the networks up within the first updates:
    the run must stop at the first log with the quantity and the step, not crash in the physics."""
    _, script = SCRIPTS[name]
    flags = {"--env-id": "Pendulum-v1", "--learning-starts": "100", "--log-every": "50", "--learning-rate": "1e30"}
    if name == "ce":
        flags["--num-agents"] = "2"
    result = subprocess.run([sys.executable, str(script), *argv(flags)], cwd=tmp_path, env=SUBPROCESS_ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "not finite at step " in line and "checkpoint in runs/" in line, line
    (checkpoint,) = (tmp_path / "runs").glob("*/checkpoint.pt")
    assert str(checkpoint.relative_to(tmp_path)) in line
    state = torch.load(checkpoint, weights_only=True)  # our own format loads without unpickling code
    step = int(line.split("not finite at step ")[1].split(";")[0])
    assert state["global_step"] == step and step >= 100 and {"actor", "qf", "log_alpha"} <= state.keys()


@pytest.mark.parametrize("name", ["sac", "ce"])
def test_ctrl_c_stops_with_one_line_exit_130_and_a_checkpoint(name, tmp_path):
    _, script = SCRIPTS[name]
    process = subprocess.Popen([sys.executable, str(script), *argv({"--total-timesteps": "100000"})], cwd=tmp_path,
                               env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/*/events.out.tfevents.*")) and time.time() < deadline:
        time.sleep(0.2)  # the run folder appears after validation, when the loop is about to start
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("interrupted: at step ") and "checkpoint in runs/" in line, line
    (checkpoint,) = tmp_path.glob("runs/*/checkpoint.pt")
    assert torch.load(checkpoint, weights_only=True)["global_step"] == int(line.split("at step ")[1].split(";")[0])
    assert "eval_return=" not in stdout  # no score for a run that did not finish
