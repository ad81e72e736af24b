"""``python -m llava_restore.playground build|train ...``

build: generate the playground data (skipped when ``manifest.json`` says it is up to date).
train: hand over to ``llava_restore.playground.train.main(argv)`` (imported only then).
controls: the text-only prior and the blank-image accuracy (``llava_restore.playground.controls``).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import fields
from typing import List, Optional

from llava_restore.playground.config import Sizes


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava_restore.playground build",
                                description="Generate the synthetic playground data (images, training "
                                            "conversations, nine benchmark folders).")
    p.add_argument("--out", default="playground/data", help="output folder (default: playground/data)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default: 0)")
    p.add_argument("--tiny", action="store_true", help="start from the tiny sizes used by the tests")
    p.add_argument("--force", action="store_true", help="rebuild even if the manifest is up to date")
    p.add_argument("--verify", action="store_true", help="after building, re-hash every file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for f in fields(Sizes):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=None, metavar="N",
                       help=f"size: {f.name} (default {f.default})")
    return p


def build_main(argv: List[str]) -> int:
    from llava_restore.playground.data import build, status, verify

    args = _build_parser().parse_args(argv)
    base = Sizes.tiny() if args.tiny else Sizes()
    overrides = {f.name: getattr(args, f.name) for f in fields(Sizes) if getattr(args, f.name) is not None}
    sizes = Sizes.from_dict({**base.to_dict(), **overrides})
    ok, reason = status(args.out, args.seed, sizes)
    if ok and not args.force:
        print(f"{args.out}: up to date (seed {args.seed}); use --force to rebuild")
    else:
        print(f"building {args.out} (seed {args.seed}): {reason}")
        manifest = build(args.out, args.seed, sizes, progress=not args.no_progress, force=True)
        counts = ", ".join(f"{k}={v}" for k, v in manifest["counts"].items())
        print(f"wrote {len(manifest['files'])} files: {counts}")
    if args.verify:
        problems = verify(args.out)
        for msg in problems:
            print(f"verify: {msg}", file=sys.stderr)
        if problems:
            return 1
        print("verify: every file matches the manifest")
    return 0


def train_main(argv: List[str]) -> int:
    module = importlib.import_module("llava_restore.playground.train")
    rc = module.main(argv)
    return 0 if rc is None else int(rc)


def controls_main(argv: List[str]) -> int:
    importlib.import_module("llava_restore.playground.controls").main(argv)
    return 0


COMMANDS = {"build": build_main, "train": train_main, "controls": controls_main}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m llava_restore.playground {{{','.join(COMMANDS)}}} [options]\n{__doc__}")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[cmd](rest)


if __name__ == "__main__":
    sys.exit(main())
