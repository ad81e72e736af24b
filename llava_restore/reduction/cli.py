"""CLI flags shared by every entry point: --reduction NAME --n-vis N [--restore] [--reduction-opts k=v ...]."""
from __future__ import annotations

import argparse

from .config import ReductionConfig, make_reduction_config


def add_reduction_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("visual-token reduction (RESTORE)")
    g.add_argument("--reduction", default="none", help="reducer name (e.g. divprune, vispruner, holov); none = all tokens")
    g.add_argument("--n-vis", type=int, default=None, help="visual-token budget n (1..N)")
    g.add_argument("--keep-ratio", type=float, default=None,
                   help="instead of --n-vis: keep floor(r * N) (>= 1) of each image's N tokens, r in (0, 1] "
                        "(N varies per image on Qwen2.5-VL)")
    g.add_argument("--restore", action="store_true", help="RESTORE with the spec's reference defaults")
    g.add_argument("--reduction-opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override any ReductionConfig field, e.g. anchor_rule=dpc_higher distance_term=false")


def reduction_config_from_args(args: argparse.Namespace) -> ReductionConfig | None:
    """None when no reduction is asked for (plain LLaVA)."""
    if (args.reduction == "none" and not args.restore and args.n_vis is None and args.keep_ratio is None
            and not args.reduction_opts):
        return None
    cfg = make_reduction_config(list(args.reduction_opts), method=args.reduction, n_vis=args.n_vis,
                                keep_ratio=args.keep_ratio, restore=args.restore)
    return cfg.resolve()
