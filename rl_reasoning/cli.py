"""Command line: `rl-reasoning train RECIPE [key=value ...]`.

Bad input (recipe, override, data, model path, reward function) ends in a one-line
`error: ...` on stderr and exit code 2; everything already written stays on disk.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError
from .untrusted import terminal_safe

EXIT_USER_ERROR = 2


def _train(args) -> int:
    from .config import load_config
    from .runtime import import_beside
    from .trainer import run

    cfg = load_config(args.recipe, args.overrides)
    import_beside(args.recipe)  # a reward module next to the recipe (e.g. recipes/my_rewards.py) is importable by name
    run(cfg, recipe_name=Path(args.recipe).stem, quiet=args.quiet)
    return 0


def _export(args) -> int:
    from .models import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote a full checkpoint (adapters merged) to {out}")
    return 0


def _prepare(args) -> int:
    from .models import main as prepare_main

    return prepare_main(args.models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rl-reasoning", description="GRPO reasoning training on a laptop CPU or one GPU.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train with a YAML recipe", description="Train with GRPO from a YAML recipe.")
    train.add_argument("recipe", help="path to a YAML recipe, e.g. recipes/quickstart.yaml")
    train.add_argument("overrides", nargs="*", help="key=value or section.key=value, e.g. optim.lr=1e-5 max_steps=20")
    train.add_argument("--quiet", action="store_true", help="no progress bar or per-step lines")
    train.set_defaults(func=_train)
    from .eval_cli import add_parser as add_eval_parser

    add_eval_parser(sub)
    from .distill import add_parser as add_distill_parser

    add_distill_parser(sub)
    from .shrink import add_parser as add_shrink_parser

    add_shrink_parser(sub)
    from .traces.cli import add_parser as add_traces_parser
    from .traces.report import add_parser as add_report_parser

    add_traces_parser(sub)
    add_report_parser(sub)
    export = sub.add_parser("export", help="write a full HF checkpoint from a training checkpoint (LoRA adapters merged)")
    export.add_argument("checkpoint", help="a checkpoint directory, e.g. runs/x/checkpoints/step-000010")
    export.add_argument("-o", "--out", required=True, help="output directory (must be new or empty)")
    export.set_defaults(func=_export)
    prep = sub.add_parser("prepare", help="convert and cache models ahead of time (default: the embedded model)")
    prep.add_argument("models", nargs="*")
    prep.set_defaults(func=_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(terminal_safe(f"error: {e}"), file=sys.stderr)  # messages may quote file contents or model text
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        # (a training run interrupted once it has started stops cleanly itself and says how to resume: docs/resume.md)
        print("interrupted; files already written are intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
