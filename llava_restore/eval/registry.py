"""Scorer registry: ``@register_scorer("pope")`` on a scoring function, ``get_scorer("pope")``.

Scorer modules are imported lazily on first lookup so that importing the registry stays cheap.
Each registered function returns a dict of metrics; each module also has ``main(argv)`` (its CLI).
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict

# benchmark name -> module that registers it (imported on demand)
SCORER_MODULES: Dict[str, str] = {
    "gqa": "llava_restore.eval.eval_gqa",
    "mmbench": "llava_restore.eval.eval_mmbench",
    "mme": "llava_restore.eval.eval_mme",
    "ocrbench": "llava_restore.eval.eval_ocrbench",
    "pope": "llava_restore.eval.eval_pope",
    "sqa": "llava_restore.eval.eval_science_qa",
    "seed": "llava_restore.eval.eval_seed",
    "textvqa": "llava_restore.eval.eval_textvqa",
    "vqav2": "llava_restore.eval.eval_vqav2",
}

_SCORERS: Dict[str, Callable[..., dict]] = {}


def register_scorer(name: str) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    """Decorator registering ``fn`` as the scorer of benchmark ``name`` (one scorer per name)."""

    def deco(fn: Callable[..., dict]) -> Callable[..., dict]:
        if name in _SCORERS and _SCORERS[name] is not fn:
            raise ValueError(f"scorer {name!r} is already registered by {_SCORERS[name].__module__}")
        _SCORERS[name] = fn
        return fn

    return deco


def known_scorers() -> list:
    return sorted(set(SCORER_MODULES) | set(_SCORERS))


def get_scorer(name: str) -> Callable[..., dict]:
    """The scoring function of benchmark ``name``; ValueError listing the known names otherwise."""
    if name not in _SCORERS and name in SCORER_MODULES:
        importlib.import_module(SCORER_MODULES[name])
    if name not in _SCORERS:
        raise ValueError(f"unknown benchmark {name!r}; known scorers: {', '.join(known_scorers())}")
    return _SCORERS[name]


def get_scorer_main(name: str) -> Callable[..., dict]:
    """The CLI entry ``main(argv) -> metrics`` of benchmark ``name``."""
    fn = get_scorer(name)
    return importlib.import_module(fn.__module__).main
