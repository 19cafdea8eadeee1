"""Crash safety end to end (docs/resume.md): a run killed with SIGKILL, or stopped with SIGINT / SIGTERM,
in the middle of a step, then resumed with resume=true, equals an uninterrupted run: metrics, traces,
evaluations and final weights, every record once and whole.

The subprocess tests start `python -m rl_reasoning train` on the tiny model. A signal lands mid-step
without timing guesses: the run's last reward, `held`, scores 0 everywhere (so it changes nothing) and,
only in a child started with HOLD_ENV=<marker>:<step>, creates <marker> during that step's rewards and
waits there until <marker>.release exists (at most 120 s). The test waits for the marker, signals, and
releases when the step should go on.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl_reasoning import checkpoint as ckpt
from rl_reasoning.run_files import JSONL_FILES
from tests.test_trainer import overrides, train
from tests.timing import hang_guard

ROOT = Path(__file__).resolve().parent.parent
HOLD_ENV = "RL_REASONING_TEST_HOLD"  # test-only, read by `held` below
SIGNAL_ENV = "RL_REASONING_TEST_SIGNAL_AT_STEP"  # test-only, read by `signals_itself` below
REWARDS = "[{name: 'tests.reward_fns:char_variety'}, {name: format, weight: 0.5}, {name: 'tests.test_crash_resume:held'}]"
RUN = dict(max_steps=4, save_every=2, eval__every=2, rollout__temperature=0.9, rewards=REWARDS)


# ----------------------------------------------------------------------------- rewards the runs call


def held(completions, step, **_):
    """0 for every completion; holds step N of a child run started with HOLD_ENV=<marker>:N (module docstring)."""
    marker, _, at = os.environ.get(HOLD_ENV, "").rpartition(":")
    if marker and step == int(at):
        Path(marker).touch()
        release, deadline = Path(marker + ".release"), time.monotonic() + 120
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return [0.0] * len(completions)


def signals_itself(completions, step, **_):
    """0 for every completion; sends this process SIGINT (an in-process Ctrl-C) when called for step SIGNAL_ENV
    (0: the evaluation before step 1)."""
    if os.environ.get(SIGNAL_ENV) == str(step):
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            raise RuntimeError("the trainer did not install its SIGINT handler; not sending SIGINT to the test process")
        signal.raise_signal(signal.SIGINT)  # to this thread: handled before the step goes on
    return [0.0] * len(completions)


# ----------------------------------------------------------------------------- comparing runs


def is_timing(key: str) -> bool:
    return key.startswith(("time/", "throughput/")) or key.endswith("seconds")


def records(run: Path) -> dict[str, list[dict]]:
    """Every run file's records without wall-clock fields; fails on a torn or corrupt line."""
    out = {}
    for name in JSONL_FILES:
        text = (run / name).read_text(encoding="utf-8")
        assert text.endswith("\n"), f"{name}: empty, or its last line is torn"
        out[name] = [{k: v for k, v in json.loads(line).items() if not is_timing(k)} for line in text.splitlines()]
    return out


def assert_same_run(run: Path, reference: Path, max_steps: int = 4) -> None:
    got, want = records(run), records(reference)
    assert [m["step"] for m in got["metrics.jsonl"]] == list(range(1, max_steps + 1))
    for name in JSONL_FILES:
        assert got[name] == want[name], name
    final = f"checkpoints/step-{max_steps:06d}/model.safetensors"
    weights, expected = load_file(str(run / final)), load_file(str(reference / final))
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert json.loads((run / "summary.json").read_text())["steps"] == max_steps


# ----------------------------------------------------------------------------- the CLI as a subprocess


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """(data file, recipe file, the folder of an uninterrupted run of RUN through the CLI)."""
    return reference_run(tiny_model_dir, tmp_path_factory.mktemp("crash"), "{}\n")


def reference_run(model_dir: Path, root: Path, recipe_text: str) -> tuple[Path, Path, Path]:
    """Write the data file and a recipe holding `recipe_text` into `root`, and run RUN with them
    through the CLI, uninterrupted; returns (data file, recipe file, run folder)."""
    data = root / "problems.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n" for a in range(10) for b in range(4)))
    recipe = root / "r.yaml"
    recipe.write_text(recipe_text)
    reference = root / "reference"
    proc = subprocess.run(command(model_dir, data, recipe, reference), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return data, recipe, reference


def command(model_dir, data, recipe, out, **extra) -> list[str]:
    return [sys.executable, "-m", "rl_reasoning", "train", "--quiet", str(recipe), *overrides(model_dir, data, out, **{**RUN, **extra})]


class Child:
    """A training run in its own session (its own process group, as a terminal's foreground job), held at `hold_step`."""

    def __init__(self, cmd: list[str], folder: Path, hold_step: int):
        self.marker = folder / "holding"
        self.err_path = folder / "stderr.txt"
        env = {**os.environ, HOLD_ENV: f"{self.marker}:{hold_step}"}
        with self.err_path.open("w") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_until(self, condition, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (exit {self.proc.returncode}) before {what}:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"timed out waiting for {what}:\n{self.stderr}")
            time.sleep(0.02)

    def wait_until_held(self) -> None:
        self.wait_until(self.marker.exists, "the held step")

    def release(self) -> None:
        Path(str(self.marker) + ".release").touch()

    def finish(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture()
def spawn():
    """Start a Child; any still running at teardown (a failed test) is killed."""
    started = []

    def start(*args, **kwargs) -> Child:
        started.append(Child(*args, **kwargs))
        return started[-1]

    yield start
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()


def steps_in(run: Path, name: str = "metrics.jsonl") -> list[int]:
    path = run / name
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def the_resume_line(stderr: str, starts: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "resume=true" in line]
    assert len(lines) == 1 and lines[0].startswith(starts), stderr
    return lines[0]


def run_printed_command(line: str) -> None:
    """Run the command a resume line ends with, as a user would paste it."""
    printed = line.split("continue with: ", 1)[1]
    proc = subprocess.run(shlex.split(printed), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("hold_step", [
    pytest.param(3, id="step-3"),  # the step after the step-2 checkpoint
    pytest.param(4, id="step-4"),  # step 3 was logged after the last checkpoint (step 2): its records are dropped and redone
])
def test_kill_9_mid_step_then_resume_equals_an_uninterrupted_run(tiny_model_dir, setup, tmp_path, spawn, hold_step):
    data, recipe, reference = setup
    run = tmp_path / "run"
    child = spawn(command(tiny_model_dir, data, recipe, run), tmp_path, hold_step=hold_step)
    child.wait_until_held()
    assert steps_in(run) == list(range(1, hold_step)) and (run / "checkpoints" / "step-000002" / "trainer_state.json").is_file()
    child.proc.send_signal(signal.SIGKILL)
    assert child.finish() == -signal.SIGKILL
    assert not (run / "summary.json").exists() and not (run / "checkpoints" / "step-000003").exists()
    proc = subprocess.run(command(tiny_model_dir, data, recipe, run, resume="true"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(run, reference)
    assert steps_in(run, "metrics.jsonl.dropped") == ([3] if hold_step == 4 else [])


@pytest.mark.slow
@pytest.mark.parametrize("signum, hold_step", [
    pytest.param(signal.SIGINT, 3, id="SIGINT"),  # no checkpoint is due after step 3 (save_every=2): the stop writes one
    pytest.param(signal.SIGTERM, 2, id="SIGTERM"),  # the evaluation and checkpoint due after step 2 are done, then the run stops
])
def test_sigint_and_sigterm_finish_the_step_checkpoint_and_resume_exactly(tiny_model_dir, setup, tmp_path, spawn, signum, hold_step):
    data, recipe, reference = setup
    run = tmp_path / "run"
    child = spawn(command(tiny_model_dir, data, recipe, run), tmp_path, hold_step=hold_step)
    child.wait_until_held()
    name = signal.Signals(signum).name
    if signum == signal.SIGINT:
        os.killpg(child.proc.pid, signum)  # Ctrl-C in a terminal signals the whole foreground process group
    else:
        child.proc.send_signal(signum)  # a scheduler or `kill` signals the process
    child.wait_until(lambda: f"{name}: stopping after step {hold_step}" in child.stderr, "the notice")
    child.release()
    assert child.finish() == 128 + signum
    line = the_resume_line(child.stderr, f"interrupted by {name}: stopped after step {hold_step} with checkpoint ")
    checkpoint = run / "checkpoints" / f"step-{hold_step:06d}"
    assert f"with checkpoint {checkpoint};" in line and (checkpoint / "trainer_state.json").is_file()
    assert steps_in(run) == list(range(1, hold_step + 1))
    assert steps_in(run, "eval.jsonl") == [0, 2]
    assert not (run / "summary.json").exists()
    run_printed_command(line)
    assert_same_run(run, reference)


@pytest.mark.slow
def test_a_second_sigint_aborts_at_once_and_resume_still_equals_an_uninterrupted_run(tiny_model_dir, setup, tmp_path, spawn):
    data, recipe, reference = setup
    run = tmp_path / "run"
    child = spawn(command(tiny_model_dir, data, recipe, run), tmp_path, hold_step=3)
    child.wait_until_held()
    os.killpg(child.proc.pid, signal.SIGINT)
    child.wait_until(lambda: "SIGINT: stopping after step 3" in child.stderr, "the notice")
    time.sleep(ckpt.StopSignals.ECHO_S + 0.2)  # a repeat within ECHO_S counts as the same Ctrl-C (a launcher's echo)
    os.killpg(child.proc.pid, signal.SIGINT)
    # Step 3 stays held (never released here): a run that waited for it would leave step 3's records and
    # checkpoint, checked below. The guard only stops a hang: the abort took 0.05 s measured.
    with hang_guard(60, "the run after a second SIGINT"):
        assert child.finish(timeout=None) == 130
    line = the_resume_line(child.stderr, f"aborted by a second SIGINT; the last checkpoint is {run / 'checkpoints' / 'step-000002'}; ")
    assert not (run / "checkpoints" / "step-000003").exists() and steps_in(run) == [1, 2]
    run_printed_command(line)
    assert_same_run(run, reference)


# ----------------------------------------------------------------------------- in process (fast)


@pytest.mark.parametrize("at", [2, 0], ids=["step-2", "before-step-1"])
def test_sigint_in_process_stops_after_the_step_and_resume_equals_an_uninterrupted_run(
        tiny_model_dir, arithmetic_jsonl, tmp_path, monkeypatch, capfd, at):
    """The same contract without a subprocess: Ctrl-C during step 2, or during the evaluation before step 1,
    of GRPOTrainer.train() (the Python API). `signals_itself` is the accuracy reward, so evaluations call it too."""
    common = dict(max_steps=3, rollout__temperature=0.9, eval__at_end="false",
                  rewards="[{name: 'tests.test_crash_resume:signals_itself'}, {name: 'tests.reward_fns:char_variety'}]")
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "straight", **common)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    monkeypatch.setenv(SIGNAL_ENV, str(at))
    capfd.readouterr()
    with pytest.raises(ckpt.Interrupted) as stopped:
        train(tiny_model_dir, arithmetic_jsonl, tmp_path / "split", **common)
    assert stopped.value.code == 130
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back
    err = capfd.readouterr().err.strip().splitlines()  # capfd: the notice is written to fd 2 directly
    checkpoint = tmp_path / "split" / "checkpoints" / f"step-{at:06d}"
    when = f"after step {at}" if at else "before the first step"
    assert err == [f"SIGINT: stopping {when} and saving a checkpoint; Ctrl-C again aborts at once",
                   f"interrupted by SIGINT: stopped {when} with checkpoint {checkpoint}; "
                   f"continue with: output_dir={tmp_path / 'split'} resume=true"]
    assert steps_in(tmp_path / "split") == list(range(1, at + 1)) and steps_in(tmp_path / "split", "eval.jsonl") == [0]
    monkeypatch.delenv(SIGNAL_ENV)
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "split", resume="true", **common)
    got, want = records(tmp_path / "split"), records(tmp_path / "straight")
    assert [m["step"] for m in got["metrics.jsonl"]] == [1, 2, 3]
    for name in JSONL_FILES:
        assert got[name] == want[name], name  # eval.jsonl: the step-0 evaluation once, not again on resume


def test_a_quick_repeat_of_the_signal_is_the_same_request(tmp_path):
    """Under `accelerate launch` a terminal's Ctrl-C reaches a worker directly and again through the launcher."""
    with ckpt.StopSignals(tmp_path, step=5, tell=False) as signals:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
        assert signals.requested == signal.SIGTERM  # and still alive: the repeat did not abort
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("argv, expected", [
    (["/venv/bin/rl-reasoning", "train", "recipes/q.yaml", "max_steps=4", "output_dir=old"],
     "/venv/bin/rl-reasoning train recipes/q.yaml max_steps=4 output_dir=runs/a resume=true"),
    (["/x/rl_reasoning/__main__.py", "train", "--quiet", "r.yaml", "rewards=[{name: math}]", "resume=true"],
     "{python} -m rl_reasoning train --quiet r.yaml 'rewards=[{name: math}]' output_dir=runs/a resume=true"),
    (["/x/rl_reasoning/train.py", "r.yaml", "resume=runs/a/checkpoints/step-000002"],
     "{python} -m rl_reasoning.train r.yaml output_dir=runs/a resume=true"),
    (["/usr/lib/python3/site-packages/ipykernel_launcher.py", "-f", "kernel.json"], "output_dir=runs/a resume=true"),
])
def test_resume_command_repeats_the_command_that_started_the_run(argv, expected):
    assert ckpt.resume_command(Path("runs/a"), argv, launcher=[]) == expected.replace("{python}", shlex.quote(ckpt._python()))


def test_resume_command_under_a_launcher_repeats_the_launch():
    launch = ["accelerate", "launch", "--num_processes", "2", "-m", "rl_reasoning.train", "r.yaml", "output_dir=runs/a"]
    got = ckpt.resume_command(Path("runs/a"), ["/x/rl_reasoning/train.py", "r.yaml", "output_dir=runs/a"], launcher=launch)
    assert got == "accelerate launch --num_processes 2 -m rl_reasoning.train r.yaml output_dir=runs/a resume=true"
