"""One module per LLaVA-1.5 benchmark; each writes ``eval/<bench>/`` in the real file formats.

Each module has ``build(sink, seed, sizes) -> number of questions`` and ``n_images(sizes, seed)`` (for the progress bar).
"""
from __future__ import annotations

import importlib
from typing import Dict

BENCHMARKS: Dict[str, str] = {
    "gqa": "llava_restore.playground.benchmarks.gqa",
    "mmbench": "llava_restore.playground.benchmarks.mmbench",
    "mme": "llava_restore.playground.benchmarks.mme",
    "ocrbench": "llava_restore.playground.benchmarks.ocrbench",
    "pope": "llava_restore.playground.benchmarks.pope",
    "sqa": "llava_restore.playground.benchmarks.sqa",
    "seed": "llava_restore.playground.benchmarks.seed",
    "textvqa": "llava_restore.playground.benchmarks.textvqa",
    "vqav2": "llava_restore.playground.benchmarks.vqav2",
}


def get(name: str):
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return importlib.import_module(BENCHMARKS[name])
