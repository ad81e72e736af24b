"""Prompt formats and small helpers shared by the benchmark writers."""
from __future__ import annotations

import random
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, TypeVar

from llava_restore.playground import vocab
from llava_restore.playground.questions import format_options
from llava_restore.playground.scene import Scene, SceneConfig, sample_scene
from llava_restore.playground.sink import Sink

EVAL = "eval"
MAX_REDRAWS = 100
T = TypeVar("T")


def short_prompt(question: str) -> str:
    """LLaVA-1.5's short-answer prompt (VQAv2, GQA, POPE, MME, TextVQA)."""
    return f"{question}\n{vocab.SHORT_ANSWER}"


def mc_prompt(question: str, options: Sequence[str]) -> str:
    """LLaVA-1.5's multiple-choice prompt (SEED; MMBench and SQA add the suffix at run time)."""
    return f"{question}\n{format_options(options)}\n{vocab.MC_ANSWER}"


def write_scenes(sink: Sink, bench: str, items: Iterable[Tuple[str, Scene]]) -> None:
    """``scenes/<bench>.jsonl``: one {image, scene} per image, the ground truth of every answer."""
    sink.jsonl(f"scenes/{bench}.jsonl", ({"image": img, "scene": sc.to_dict()} for img, sc in items))


def distinct(values: Iterable[str]) -> List[str]:
    return list(dict.fromkeys(values))


def redraw(rng: random.Random, cfg: SceneConfig, make: Callable[[Scene, random.Random], Optional[T]],
           what: str, min_texts: int = 0) -> Tuple[Scene, T]:
    """Draw scenes until ``make(scene, rng)`` finds an instance (e.g. an unambiguous relation)."""
    for _ in range(MAX_REDRAWS):
        scene = sample_scene(rng, cfg, min_texts=min_texts)
        made = make(scene, rng)
        if made is not None:
            return scene, made
    raise RuntimeError(f"{what}: no suitable scene in {MAX_REDRAWS} draws")
