"""Sizes of the generated data set, and the scene variants each part of it uses."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Dict

from llava_restore.playground.scene import SceneConfig


@dataclass(frozen=True)
class Sizes:
    """How much to generate. Defaults: training sized for ~15 min of CPU training, eval sets
    small enough to score on CPU."""

    train_images: int = 10000
    train_qa_per_image: int = 8  # short-answer turns per image (plus MC / caption records)
    gqa_images: int = 250
    gqa_per_image: int = 4  # -> 1,000 GQA-style questions (one standard error <= 1.6 points)
    pope_images: int = 56  # x 6 questions x 3 categories -> 3 x 336 = 1,008
    mme_images: int = 10  # per subtask, 2 questions each (6 subtasks -> 120 questions)
    mmbench_questions: int = 100  # plus circular copies
    ocrbench_questions: int = 100
    sqa_questions: int = 100
    seed_questions: int = 150  # image questions
    seed_video_questions: int = 20
    textvqa_images: int = 60
    textvqa_per_image: int = 2
    vqav2_images: int = 70
    vqav2_per_image: int = 3  # test-dev; test2015 adds one more question per image

    def to_dict(self) -> Dict[str, int]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Dict[str, int]) -> "Sizes":
        known = {f.name for f in fields(Sizes)}
        bad = sorted(set(d) - known)
        if bad:
            raise KeyError(f"unknown size key(s) {bad}; known: {sorted(known)}")
        sizes = replace(Sizes(), **d)
        sizes.validate()
        return sizes

    def validate(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"size {f.name} must be a non-negative int, got {v!r}")

    @staticmethod
    def tiny() -> "Sizes":
        """A few dozen images in total (tests)."""
        return Sizes(train_images=12, train_qa_per_image=6, gqa_images=6, gqa_per_image=3,
                     pope_images=4, mme_images=2, mmbench_questions=6, ocrbench_questions=8,
                     sqa_questions=8, seed_questions=9, seed_video_questions=2, textvqa_images=4,
                     textvqa_per_image=2, vqav2_images=4, vqav2_per_image=3)


# Scene variants. Training sees every variant's features (texts, expressions, motion).
BASE = SceneConfig()
TRAIN = replace(BASE, text_prob=0.45, motion_prob=0.08,
                text_kinds=(("word", 0.45), ("number", 0.3), ("digits", 0.08), ("nonsense", 0.07),
                            ("expression", 0.1)))
OBJECTS = replace(BASE, text_prob=0.3)  # GQA / POPE / VQAv2 / MMBench / SEED / SQA
TEXT = replace(BASE, text_prob=1.0, second_text_prob=0.5, max_objects=4)  # TextVQA
OCR_SINGLE = replace(BASE, text_prob=1.0, second_text_prob=0.0, min_objects=1, max_objects=3)
OCR_PAIR = replace(BASE, text_prob=1.0, second_text_prob=1.0, min_objects=1, max_objects=3)
EXPRESSION = replace(OCR_SINGLE, text_kinds=(("expression", 1.0),))
VIDEO = replace(BASE, motion_prob=1.0, text_prob=0.0)
