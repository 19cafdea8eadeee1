"""Checkpoints that resume a run exactly: weights, optimizer, scheduler, RNG states, data position.

Layout of `<run>/checkpoints/step-000010/`:
    model.safetensors, config.json, tokenizer files   (a normal HF checkpoint: loadable as a model)
    optimizer.pt, scheduler.pt                         (torch state dicts)
    rng.pt                                             (python, numpy, torch and rollout-generator states)
    trainer_state.json                                 (step, data sampler position)
A checkpoint is written to a temporary directory and renamed into place, so a crash while
saving never leaves a half-written checkpoint under its final name.

Stopping a run (docs/resume.md): `StopSignals` turns a first SIGINT (Ctrl-C) or SIGTERM into a
request that the trainer honours at the end of the step in progress: it writes a checkpoint,
prints one line with the command that continues the run (`resume_command`) and exits 130 / 143
(`Interrupted`). A second signal aborts at once; like `kill -9`, that leaves the last checkpoint
to resume from.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def rng_state(generator: torch.Generator) -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "rollout": generator.get_state(),
    }


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["rollout"])


def save_checkpoint(
    run_dir: Path, step: int, model, tokenizer, optimizer, scheduler, generator, trainer_state: dict, keep: int,
    state_dict: dict | None = None,
) -> Path:
    """`state_dict`: full weights gathered from a sharded model (FSDP/ZeRO); the checkpoint then
    holds weights only, since the optimizer state is sharded across processes."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
        tokenizer.save_pretrained(tmp)
        if state_dict is None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(rng_state(generator), tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=2))
    except (OSError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not _is_write_failure(err):
            raise  # a bug, not the disk: keep its traceback
        free = shutil.disk_usage(run_dir).free / 2**30
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(_failed_save_message(run_dir, step, err, free, list_checkpoints(run_dir))) from err
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _is_write_failure(err: RuntimeError) -> bool:
    """torch.save reports a full disk as a RuntimeError from its zip writer ("unexpected pos ...")."""
    text = str(err)
    return any(mark in text for mark in ("inline_container", "PytorchStreamWriter", "unexpected pos", "No space left"))


def _failed_save_message(run_dir: Path, step: int, err: Exception, free_gib: float, earlier: list[Path]) -> str:
    head = (f"saving the step-{step} checkpoint failed ({type(err).__name__}: {str(err).strip()[:200]}); "
            f"{free_gib:.1f} GiB free under {run_dir}. Metrics and traces are kept")
    if earlier:
        return (f"{head}, and the checkpoints up to {earlier[-1].name} are intact: free space (or lower "
                f"save_total_limit), then continue with output_dir={run_dir} resume=true.")
    return f"{head}; no earlier checkpoint exists, so free space and start again with another output_dir."


def find_resume_checkpoint(resume, run_dir: Path) -> Path | None:
    """`resume`: False, True (latest checkpoint in run_dir) or a path to a checkpoint directory."""
    if resume is False:
        return None
    if resume is True:
        found = list_checkpoints(run_dir)
        if not found:
            raise UserError(f"resume: no checkpoint found under {Path(run_dir) / 'checkpoints'}")
        return found[-1]
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise UserError(f"resume: {path} is not a checkpoint directory (no trainer_state.json)")
    return path


def set_aside_newer_checkpoints(run_dir: Path, step: int) -> list[Path]:
    """Resuming from an older checkpoint abandons the later ones: rename them (nothing is deleted)
    so that retention and `resume: true` only ever see checkpoints of the run being continued."""
    moved = []
    for path in list_checkpoints(run_dir):
        if int(STEP_DIR.match(path.name).group(1)) > step:
            target = path.with_name(path.name + ".abandoned")
            n = 1
            while target.exists():
                target, n = path.with_name(f"{path.name}.abandoned-{n}"), n + 1
            path.rename(target)
            moved.append(target)
    return moved


def load_training_state(path: Path, model, optimizer, scheduler, generator) -> dict:
    """Restore everything but the model config; returns trainer_state.json."""
    from safetensors.torch import load_file

    from .adapters import is_peft

    if is_peft(model):  # LoRA: the checkpoint holds the adapter only
        from peft import set_peft_model_state_dict

        adapter = path / "adapter_model.safetensors"
        if not adapter.is_file():
            raise UserError(f"resume: {path} holds no LoRA adapter (adapter_model.safetensors); was the run trained with lora.r = 0?")
        result = set_peft_model_state_dict(model, load_file(str(adapter)))
        if result.unexpected_keys:
            raise UserError(f"resume: {path} does not match the adapter (unexpected {result.unexpected_keys[:3]})")
        return _restore_optimizer_and_rng(path, optimizer, scheduler, generator)
    weights = sorted(path.glob("model*.safetensors"))
    if not weights:
        raise UserError(f"resume: {path} holds no model weights (model*.safetensors); was the run trained with LoRA?")
    state = {}
    for w in weights:
        state.update(load_file(str(w)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [m for m in missing if m not in tied and not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise UserError(f"resume: {path} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return _restore_optimizer_and_rng(path, optimizer, scheduler, generator)


def _restore_optimizer_and_rng(path: Path, optimizer, scheduler, generator) -> dict:
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False), generator)
    return json.loads((path / "trainer_state.json").read_text())


# ----------------------------------------------------------------------------- stopping on a signal


class Interrupted(SystemExit):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint: exit status 128 + the signal (130, 143), no traceback."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM while the trainer runs.

    The first one sets `requested` (the signal number) and says, on stderr, after which step the
    run will stop: `step`, kept current by the trainer (None once the steps are over and the run
    is finishing anyway). The trainer checks `requested` between steps. Another signal aborts at
    once: one line on stderr names the checkpoint to continue from, then the process exits
    128 + signal without writing anything more. A repeat within `ECHO_S` seconds of the first is
    taken as the same request: under `accelerate launch` a terminal's Ctrl-C reaches each worker
    twice, directly and forwarded by the launcher. Python lets only the main thread set handlers;
    in any other thread this does nothing and the signals keep their usual effect.
    """

    ECHO_S = 1.0
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, run_dir: Path, step: int | None, tell: bool = True):
        self.run_dir, self.step, self.tell = Path(run_dir), step, tell
        self.requested = 0
        self.newline_first = False  # a progress bar is being drawn on stderr
        self._first_at = 0.0
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if not self.requested:
            self.requested, self._first_at = signum, time.monotonic()
            again = "Ctrl-C again" if signum == signal.SIGINT else "a second signal"
            what = ("finishing the run (final evaluation and checkpoint)" if self.step is None
                    else f"stopping {_after(self.step)} and saving a checkpoint")
            self._say(f"{name}: {what}; {again} aborts at once")
        elif time.monotonic() - self._first_at >= self.ECHO_S:
            found = list_checkpoints(self.run_dir)
            self._say(f"aborted by a second {name}; " + (
                f"the last checkpoint is {found[-1]}; continue with: {resume_command(self.run_dir)}" if found
                else "no checkpoint was written yet, so start again with another output_dir"))
            os._exit(128 + signum)

    def _say(self, line: str) -> None:
        """os.write, not print: the handler may have interrupted a print to the same stream."""
        if self.tell:
            try:
                os.write(2, (("\n" if self.newline_first else "") + line + "\n").encode())
            except OSError:
                pass

    def report_stop(self, signum: int, step: int, checkpoint: Path) -> None:
        """The one line printed when the run stops on a signal."""
        if self.tell:
            print(f"interrupted by {signal.Signals(signum).name}: stopped {_after(step)} with checkpoint {checkpoint}; "
                  f"continue with: {resume_command(self.run_dir)}", file=sys.stderr, flush=True)


def _after(step: int) -> str:
    return f"after step {step}" if step else "before the first step"


RESUME_KEYS = ("output_dir=", "resume=")


def resume_command(run_dir: Path, argv: list[str] | None = None, launcher: list[str] | None = None) -> str:
    """The command that continues the run in `run_dir`: the one that started this process
    (`sys.argv`; under `accelerate launch` or `torchrun`, the launcher's command line) with
    `output_dir=RUN resume=true` in place of its own output_dir/resume overrides. For a run started
    some other way (the Python API) only those two overrides."""
    argv = list(sys.argv if argv is None else argv)
    tail = [f"output_dir={run_dir}", "resume=true"]
    script = Path(argv[0]).as_posix() if argv else ""
    if Path(script).name == "rl-reasoning":
        program = ["rl-reasoning"] if shutil.which("rl-reasoning") == str(Path(script).absolute()) else [script]
        command = [*program, *argv[1:]]
    elif script.endswith("rl_reasoning/__main__.py"):
        command = [_python(), "-m", "rl_reasoning", *argv[1:]]
    elif script.endswith("rl_reasoning/train.py"):
        launcher = _launcher_command() if launcher is None else launcher
        command = launcher or [_python(), "-m", "rl_reasoning.train", *argv[1:]]
    else:
        return shlex.join(tail)
    return shlex.join([a for a in command if not a.startswith(RESUME_KEYS)] + tail)


def _python() -> str:
    return "python" if shutil.which("python") == sys.executable else sys.executable


def _launcher_command() -> list[str] | None:
    """`accelerate launch ...` or `torchrun ...` (or their `python -m` forms) as typed, read from the parent process (Linux), or None."""
    try:
        words = [w.decode(errors="replace") for w in Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0") if w]
    except OSError:
        return None
    for i, word in enumerate(words):
        name = Path(word).name
        if name == "torchrun" or (name == "accelerate" and words[i + 1:i + 2] == ["launch"]):
            return [name, *words[i + 1:]]
        if word in ("accelerate.commands.launch", "torch.distributed.run") and words[i - 1:i] == ["-m"]:
            return [_python(), "-m", *words[i:]]
    return None
