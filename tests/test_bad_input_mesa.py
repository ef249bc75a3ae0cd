"""The command-line contract of mesa_maddpg.py and baselines/maddpg.py (the shared `cli` block):
bad input is one line `error: --flag VALUE: ...` and exit 2, a NaN in training one line and
exit 3 with a checkpoint written, Ctrl-C one line and exit 130; never a traceback.

Most cases run in-process through `cli(main, Args)` with sys.argv patched (fast); a few run the
real command to check the real exit code and stderr.
Run: /work/venv/bin/pytest tests/test_bad_input_mesa.py -q (about 20 s on 2 cores)."""

import importlib.util
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"mesa": "mesa_maddpg.py", "maddpg": "baselines/maddpg.py"}


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULES = {"mesa": load(SCRIPTS["mesa"], "mesa_maddpg"), "maddpg": load(SCRIPTS["maddpg"], "baselines_maddpg")}
# budgets that pass validation and run in about a second; the climb-one-step game has one step per episode
TINY = {"mesa": ["--env-id", "climb-one-step", "--num-train-tasks", "2", "--num-test-tasks", "1", "--collect-steps", "40",
                 "--meta-train-steps", "100", "--num-exploration-policies", "2", "--total-timesteps", "60",
                 "--learning-starts", "20", "--batch-size", "4", "--eval-episodes", "1", "--no-cuda"],
        "maddpg": ["--env-id", "climb-one-step", "--total-timesteps", "60", "--learning-starts", "20", "--batch-size", "4",
                   "--eval-episodes", "1", "--no-cuda"]}
POLICIES = "--exploration-policies"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """runs/ in the test's directory; cli's Ctrl-C handler and stop flag put back afterwards."""
    monkeypatch.chdir(tmp_path)
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)
    for module in MODULES.values():
        module.STOP_REQUESTED[0] = False


def run_in_process(name, argv, monkeypatch, capsys):
    """cli(main, Args) as the command line runs it -> (exit code, stdout, stderr)."""
    module = MODULES[name]
    monkeypatch.setattr(sys, "argv", [SCRIPTS[name], *argv])
    try:
        module.cli(module.main, module.Args)
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err, prefix, *parts):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert all(part in lines[0] for part in parts), (parts, err)
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- bad settings
# (command-line arguments, the flag the error must name); the scripts' default env unless given
BOTH = [
    # the user report: tracebacks or a silent test_return=0.5000 before
    (["--batch-size", "0"], "--batch-size"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--total-timesteps", "-1"], "--total-timesteps"),
    (["--gamma", "inf"], "--gamma"),
    (["--eval-frequency", "0"], "--eval-frequency"),
    # integers
    (["--seed", "-1"], "--seed"),
    (["--seed", "2147483648"], "--seed"),
    (["--task-seed", "-1"], "--task-seed"),
    (["--task-seed", "2147483648"], "--task-seed"),
    (["--torch-threads", "0"], "--torch-threads"),
    (["--num-test-tasks", "0"], "--num-test-tasks"),
    (["--num-train-tasks", "-1"], "--num-train-tasks"),
    (["--total-timesteps", "0"], "--total-timesteps"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--learning-starts", "-1"], "--learning-starts"),
    (["--hidden-dim", "0"], "--hidden-dim"),
    (["--train-frequency", "0"], "--train-frequency"),
    (["--buffer-size", "0"], "--buffer-size"),
    (["--eval-frequency", "-5"], "--eval-frequency"),
    (["--eval-episodes", "0"], "--eval-episodes"),
    (["--log-frequency", "0"], "--log-frequency"),
    # floats: nan, inf and the values out of range
    (["--learning-rate", "inf"], "--learning-rate"),
    (["--learning-rate", "0"], "--learning-rate"),
    (["--learning-rate", "-1e-3"], "--learning-rate"),
    (["--gamma", "nan"], "--gamma"),
    (["--gamma", "-0.1"], "--gamma"),
    (["--gamma", "1.5"], "--gamma"),
    (["--tau", "0"], "--tau"),
    (["--tau", "1.5"], "--tau"),
    (["--tau", "nan"], "--tau"),
    (["--max-grad-norm", "0"], "--max-grad-norm"),
    (["--max-grad-norm", "nan"], "--max-grad-norm"),
    (["--max-grad-norm", "-inf"], "--max-grad-norm"),
    (["--gumbel-temperature", "0"], "--gumbel-temperature"),
    (["--gumbel-temperature", "inf"], "--gumbel-temperature"),
    (["--logit-penalty", "-1"], "--logit-penalty"),
    (["--logit-penalty", "nan"], "--logit-penalty"),
    (["--exploration-noise", "-0.1"], "--exploration-noise"),
    (["--exploration-noise", "inf"], "--exploration-noise"),
    # environments and their settings (the envs check them; the error names the flag)
    (["--env-id", "pong"], "--env-id"),
    (["--env-id", "mpe-climb", "--k", "3"], "--k"),  # k > n = 2
    (["--env-id", "mpe-climb", "--k", "0"], "--k"),
    (["--env-id", "mpe-climb", "--n-agents", "0"], "--n-agents"),
    (["--env-id", "mpe-climb", "--num-actions", "1"], "--num-actions"),
    (["--env-id", "mpe-climb", "--num-actions", "50"], "--num-actions"),  # 50 landmarks never drawn apart
    (["--env-id", "mpe-climb", "--max-steps", "0"], "--max-steps"),
    (["--env-id", "swimmer-climb", "--max-steps", "0"], "--max-steps"),
    (["--env-id", "swimmer-climb", "--num-actions", "3"], "--num-actions"),  # not a Swimmer setting
    (["--env-id", "climb-one-step", "--num-actions", "1"], "--num-actions"),
    (["--env-id", "climb-one-step", "--n-agents", "-2"], "--n-agents"),
    (["--env-id", "climb-one-step", "--stages", "3"], "--stages"),  # multi-stage only
    (["--env-id", "climb-one-step", "--k", "2"], "--k"),  # MPE only
    (["--env-id", "climb-one-step", "--max-steps", "5"], "--max-steps"),  # MPE and Swimmer only
    (["--env-id", "climb-multi-stage", "--stages", "0"], "--stages"),
    (["--env-id", "climb-one-step", "--num-train-tasks", "18", "--num-test-tasks", "5"], "--num-train-tasks"),  # 20 tasks
    # budgets that make the run meaningless
    (["--total-timesteps", "100", "--learning-starts", "100"], "--learning-starts"),
    (["--total-timesteps", "100", "--learning-starts", "500"], "--learning-starts"),
]
MESA_ONLY = [
    (["--num-clusters", "0"], "--num-clusters"),
    (["--distance-eps", "-1"], "--distance-eps"),
    (["--distance-eps", "0"], "--distance-eps"),
    (["--distance-eps", "nan"], "--distance-eps"),
    (["--num-train-tasks", "0"], "--num-train-tasks"),
    (["--collect-steps", "0"], "--collect-steps"),
    (["--collect-steps", "5", "--num-train-tasks", "10"], "--collect-steps"),  # no step for 5 training tasks
    (["--meta-train-steps", "0"], "--meta-train-steps"),
    (["--meta-train-steps", "12000", "--learning-starts", "3000"], "--meta-train-steps"),  # 3000 per policy, all random
    (["--num-exploration-policies", "0"], "--num-exploration-policies"),
    (["--kmeans-iterations", "0"], "--kmeans-iterations"),
    (["--max-mstar-size", "0"], "--max-mstar-size"),
    (["--reward-threshold", "nan"], "--reward-threshold"),
    (["--reward-threshold", "inf"], "--reward-threshold"),
    (["--relabel-gamma", "-0.1"], "--relabel-gamma"),
    (["--relabel-gamma", "1.5"], "--relabel-gamma"),
    (["--relabel-gamma", "nan"], "--relabel-gamma"),
    (["--count-power", "0"], "--count-power"),
    (["--count-power", "nan"], "--count-power"),
    (["--exploration-start", "1.5"], "--exploration-start"),
    (["--exploration-start", "-0.1"], "--exploration-start"),
    (["--exploration-end", "nan"], "--exploration-end"),
    (["--exploration-anneal-fraction", "0"], "--exploration-anneal-fraction"),
    (["--exploration-anneal-fraction", "1.5"], "--exploration-anneal-fraction"),
]
MADDPG_ONLY = [
    (["--test-task-index", "5"], "--test-task-index"),  # 5 test tasks: 0..4
    (["--test-task-index", "-1"], "--test-task-index"),
    (["--num-test-tasks", "2", "--test-task-index", "2"], "--test-task-index"),
]
CASES = [("mesa", *case) for case in BOTH + MESA_ONLY] + [("maddpg", *case) for case in BOTH + MADDPG_ONLY]


@pytest.mark.parametrize("name, argv, flag", CASES, ids=[f"{n}: {' '.join(a)}" for n, a, _ in CASES])
def test_bad_setting_is_one_line_and_exit_2(name, argv, flag, monkeypatch, capsys):
    code, _, err = run_in_process(name, argv, monkeypatch, capsys)
    assert code == 2
    assert_one_line(err, f"error: {flag} ")
    assert not os.path.exists("runs")  # refused before anything is written


# ----------------------------------------------------------------------------- --exploration-policies files
class WritesMarker:
    """A pickle that creates a file when it is unpickled: what weights_only=False would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def saved_policies(tmp_path_factory):
    """exploration_policies.pt of a tiny climb-one-step run of mesa_maddpg.py, and its content."""
    folder = tmp_path_factory.mktemp("policies")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        mesa = MODULES["mesa"]
        args = mesa.Args(env_id="climb-one-step", num_train_tasks=2, num_test_tasks=1, collect_steps=40, meta_train_steps=100,
                         num_exploration_policies=2, total_timesteps=30, learning_starts=20, batch_size=4,
                         eval_episodes=1, cuda=False)
        path = mesa.main(args)["exploration_policies"]
    finally:
        os.chdir(cwd)
    path = str(folder / path)
    return path, torch.load(path, weights_only=True)


def write_bad_file(kind, good_path, good, tmp_path):
    """A file of `kind` in tmp_path -> its path."""
    path = tmp_path / f"{kind}.pt"
    data = Path(good_path).read_bytes()
    actor = good["actors"][0]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "text":
        path.write_text("exploration policies\n")
    elif kind == "malicious torch file":
        torch.save({**good, "actors": [WritesMarker(tmp_path / "marker")]}, path)
    elif kind == "malicious pickle":
        path.write_bytes(pickle.dumps(WritesMarker(tmp_path / "marker")))
    elif kind == "foreign dict":
        torch.save({"model": torch.zeros(3), "step": 10}, path)
    elif kind == "list":
        torch.save([actor, actor], path)
    elif kind == "tensor":
        torch.save(torch.zeros(2, 3), path)
    elif kind == "wrong keys":
        torch.save({**{k: v for k, v in good.items() if k != "spaces"}, "policies": good["actors"]}, path)
    elif kind == "no actors":
        torch.save({**good, "actors": []}, path)
    elif kind == "actors not a list":
        torch.save({**good, "actors": actor}, path)
    elif kind == "actor not a dict":
        torch.save({**good, "actors": [torch.zeros(3)]}, path)
    elif kind == "actor of wrong shape":
        torch.save({**good, "actors": [{**actor, "w_in": actor["w_in"][:, :, :3]}]}, path)
    elif kind == "actor of three agents":
        torch.save({**good, "actors": [{k: torch.cat([v, v[:1]]) for k, v in actor.items()}]}, path)
    elif kind == "actor missing a weight":
        torch.save({**good, "actors": [{k: v for k, v in actor.items() if k != "w_out"}]}, path)
    elif kind == "actor with nan":
        torch.save({**good, "actors": [{**actor, "b_out": torch.full_like(actor["b_out"], float("nan"))}]}, path)
    elif kind == "folder":
        path.mkdir()
    else:
        raise ValueError(kind)
    return path


BAD_FILES = ["missing", "empty", "truncated", "random bytes", "text", "malicious torch file", "malicious pickle",
             "foreign dict", "list", "tensor", "wrong keys", "no actors", "actors not a list", "actor not a dict",
             "actor of wrong shape", "actor of three agents", "actor missing a weight", "actor with nan", "folder"]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_exploration_policies_file_is_one_line_and_runs_no_code(kind, saved_policies, tmp_path, monkeypatch, capsys):
    path = tmp_path / "nope.pt" if kind == "missing" else write_bad_file(kind, *saved_policies, tmp_path)
    code, _, err = run_in_process("mesa", [*TINY["mesa"], POLICIES, str(path)], monkeypatch, capsys)
    assert code == 2
    assert_one_line(err, f"error: {POLICIES} {path}: ", "exploration policies saved by mesa_maddpg.py")
    assert not (tmp_path / "marker").exists()  # the pickle's code never ran
    assert not os.path.exists("runs")


@pytest.mark.parametrize("argv", [["--env-id", "climb-multi-stage"], ["--hidden-dim", "32"], ["--num-actions", "4"]],
                         ids=["another env", "another hidden size", "another env setting"])
def test_policies_of_another_run_are_refused(argv, saved_policies, monkeypatch, capsys):
    code, _, err = run_in_process("mesa", [*TINY["mesa"], *argv, POLICIES, saved_policies[0]], monkeypatch, capsys)
    assert code == 2
    assert_one_line(err, f"error: {POLICIES} {saved_policies[0]}: holds policies of climb-one-step {{}}, hidden 64; this run is")


def test_saved_policies_load_with_weights_only_and_meta_test(saved_policies, monkeypatch, capsys):
    path, content = saved_policies
    assert set(content) == {"env_id", "settings", "spaces", "hidden_dim", "actors"} and len(content["actors"]) == 2
    # the file's count of policies, not --num-exploration-policies, is what meta-testing uses
    code, out, err = run_in_process("mesa", [*TINY["mesa"], "--num-exploration-policies", "5", POLICIES, path], monkeypatch, capsys)
    assert code == 0 and err == "" and out.strip().splitlines()[-1].startswith("test_return=")


# ----------------------------------------------------------------------------- valid edge values
@pytest.mark.parametrize("name", SCRIPTS)
def test_boundary_values_run(name, monkeypatch, capsys):
    # the largest seeds (env resets use seed * 1_000_003 + episode; meta-testing reseeds with seed + 1) and the
    # closed ends of the intervals are valid settings
    argv = [*TINY[name], "--seed", "2147483647", "--task-seed", "2147483647", "--gamma", "1", "--tau", "1",
            "--logit-penalty", "0", "--learning-starts", "0"]
    if name == "mesa":
        argv += ["--relabel-gamma", "0", "--exploration-start", "0", "--exploration-end", "1", "--exploration-anneal-fraction", "1"]
    code, out, err = run_in_process(name, argv, monkeypatch, capsys)
    assert code == 0 and err == "", err
    assert out.strip().splitlines()[-1].startswith("test_return=")


# ----------------------------------------------------------------------------- NaN in training, Ctrl-C
def assert_checkpoint(line, phase):
    path = line.rsplit("checkpoint in ", 1)[1]
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["phase"] == phase and isinstance(checkpoint["step"], int)
    assert {"actor", "critic", "target_actor", "target_critic", "actor_optimizer", "critic_optimizer"} <= set(checkpoint)
    return checkpoint


@pytest.mark.parametrize("name, phase", [("mesa", "explorer 1/2"), ("maddpg", "test task 1/5")])
def test_exploding_losses_stop_with_exit_3_and_a_checkpoint(name, phase, monkeypatch, capsys):
    # a learning rate of 1e30 takes the networks to inf/NaN within a few updates
    code, _, err = run_in_process(name, [*TINY[name], "--learning-rate", "1e30", "--log-frequency", "1"], monkeypatch, capsys)
    assert code == 3
    line = assert_one_line(err, "error: losses/critic_loss", "not finite at step", f"of {phase}; checkpoint in runs/")
    assert not assert_checkpoint(line, phase)["resumable"]  # for inspection only


def test_nan_actions_stop_before_mujoco(monkeypatch, capsys):
    # Swimmer's continuous actions: a NaN torque would fail an assertion deep in MaMuJoCo; the run stops before it
    argv = ["--env-id", "swimmer-climb", "--max-steps", "10", "--total-timesteps", "200", "--learning-starts", "20",
            "--batch-size", "2", "--train-frequency", "10", "--learning-rate", "1e30", "--eval-frequency", "1000",
            "--eval-episodes", "1", "--no-cuda"]
    code, _, err = run_in_process("maddpg", argv, monkeypatch, capsys)
    assert code == 3
    line = assert_one_line(err, "error: actions not finite at step ", "of test task 1/6; checkpoint in runs/")
    assert_checkpoint(line, "test task 1/6")


@pytest.mark.parametrize("name, phase", [("mesa", "collect task 1/2"), ("maddpg", "test task 1/5")])
def test_stop_request_ends_the_first_phase_with_exit_130(name, phase, monkeypatch, capsys):
    # as after a first Ctrl-C: the loop stops at its next episode boundary (meta-training included), after the
    # first episode here (one step of the one-step game), with a resumable checkpoint (tests/test_resume_mesa.py)
    MODULES[name].STOP_REQUESTED[0] = True
    code, _, err = run_in_process(name, TINY[name], monkeypatch, capsys)
    assert code == 130
    line = assert_one_line(err, f"interrupted: at step 1 of {phase}; checkpoint in runs/")
    checkpoint = assert_checkpoint(line, phase)
    assert checkpoint["step"] == 1 and checkpoint["resumable"]


# ----------------------------------------------------------------------------- the real command line
def run_command(script, *argv, cwd):
    return subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("name, argv, flag", [
    ("mesa", ["--batch-size", "0"], "--batch-size"),
    ("maddpg", ["--learning-rate", "nan"], "--learning-rate"),
    ("maddpg", ["--env-id", "mpe-climb", "--k", "3"], "--k"),
])
def test_command_line_bad_input(name, argv, flag, tmp_path):
    out = run_command(SCRIPTS[name], *argv, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert_one_line(out.stderr, f"error: {flag} ")


@pytest.mark.parametrize("kind", ["malicious torch file", "malicious pickle"])  # the pickle: torch warns on its protocol
def test_command_line_malicious_policies_file(kind, saved_policies, tmp_path):
    path = write_bad_file(kind, *saved_policies, tmp_path)
    out = run_command(SCRIPTS["mesa"], "--env-id", "climb-one-step", POLICIES, str(path), cwd=tmp_path)
    assert out.returncode == 2
    assert_one_line(out.stderr, f"error: {POLICIES} {path}: not a readable torch file")
    assert not (tmp_path / "marker").exists()


def test_ctrl_c_stops_with_one_line_and_exit_130(tmp_path):
    # meta-training of the paper's budgets (minutes): interrupted once the run has started (runs/ exists)
    process = subprocess.Popen([sys.executable, str(ROOT / SCRIPTS["mesa"]), "--env-id", "climb-one-step",
                                "--num-train-tasks", "2", "--num-test-tasks", "1", "--no-cuda"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "runs").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    line = assert_one_line(err, "interrupted: at step ", "of collect task 1/2; checkpoint in runs/")
    assert (tmp_path / line.rsplit("checkpoint in ", 1)[1]).is_file()
