"""The closed world of the playground: colours, shapes, sizes, backgrounds, words and prompt strings.

Everything a question or an answer can mention is listed here, so the answer vocabulary is small
and closed, and the tokenizer corpus can include all of it.
"""
from __future__ import annotations

from typing import Dict, Tuple

RGB = Tuple[int, int, int]

# Object colours (RGB) and their popularity weights. The uneven weights give POPE's "popular"
# negatives a meaning (the most frequent objects of the data set).
COLORS: Dict[str, RGB] = {
    "red": (230, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 100, 245),
    "yellow": (240, 220, 40),
    "purple": (160, 70, 210),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "cyan": (40, 220, 230),
}
COLOR_WEIGHTS: Dict[str, float] = {
    "red": 1.5, "blue": 1.4, "green": 1.3, "yellow": 1.1,
    "white": 1.0, "orange": 0.9, "purple": 0.8, "cyan": 0.7,
}

# Shapes are the playground's object categories (POPE asks about them, as real POPE asks about COCO
# categories). A scene holds each shape at most once, so "the ring" always names one object.
SHAPES: Tuple[str, ...] = ("square", "circle", "triangle", "diamond", "cross", "ring",
                           "star", "hexagon", "pentagon", "arrow")
SHAPE_WEIGHTS: Dict[str, float] = {
    "square": 1.4, "circle": 1.3, "triangle": 1.2, "diamond": 1.1, "cross": 1.0, "ring": 1.0,
    "star": 0.9, "hexagon": 0.8, "pentagon": 0.8, "arrow": 0.7,
}
# Co-occurrence themes: a scene favours one group's shapes (as kitchens favour cups and forks), so
# POPE's adversarial negatives (absent categories that co-occur most with present ones) mean something.
SHAPE_GROUPS: Tuple[Tuple[str, ...], ...] = (
    ("square", "diamond", "cross", "arrow"),
    ("circle", "ring", "hexagon"),
    ("triangle", "star", "pentagon"),
)
PLURALS: Dict[str, str] = {
    "square": "squares", "circle": "circles", "triangle": "triangles",
    "diamond": "diamonds", "cross": "crosses", "ring": "rings",
    "star": "stars", "hexagon": "hexagons", "pentagon": "pentagons", "arrow": "arrows",
}
# Straight sides per shape (the ScienceQA-style context states these facts).
SHAPE_SIDES: Dict[str, int] = {
    "square": 4, "circle": 0, "triangle": 3, "diamond": 4, "cross": 12, "ring": 0,
    "star": 10, "hexagon": 6, "pentagon": 5, "arrow": 7,
}

# Object sizes: side of the (square) bounding box in pixels.
SIZES: Dict[str, int] = {"small": 10, "large": 16}

# Backgrounds (RGB before noise).
BACKGROUNDS: Dict[str, RGB] = {
    "black": (24, 24, 28),
    "gray": (100, 100, 104),
    "brown": (92, 64, 42),
}

WARM_COLORS: Tuple[str, ...] = ("red", "orange", "yellow")
COOL_COLORS: Tuple[str, ...] = ("blue", "green", "cyan", "purple")

# Rendered words (upper case, three letters: every glyph of the bitmap font is 6 px wide).
WORDS: Tuple[str, ...] = (
    "CAT", "DOG", "SUN", "BOX", "CUP", "HAT", "KEY", "MAP", "PEN", "BUS", "CAR", "FOX",
    "OWL", "BEE", "EGG", "ICE", "JAM", "LOG", "NET", "OAK", "PIG", "RAT", "TOY", "VAN",
    "WEB", "ZIP", "BAG", "BED", "COW", "FAN", "GUM", "JAR",
)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"

NUMBER_WORDS: Tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
)

# Relations between two objects: key -> phrase ("the X is <phrase> the Y").
RELATIONS: Dict[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
OPPOSITE: Dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}
AXIS_OF: Dict[str, str] = {"left": "x", "right": "x", "above": "y", "below": "y"}
QUADRANTS: Tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
DIRECTIONS: Tuple[str, ...] = ("left", "right", "up", "down")

# Prompt strings, byte-identical to LLaVA-1.5's evaluation prompts.
SHORT_ANSWER = "Answer the question using a single word or phrase."
MC_ANSWER = "Answer with the option's letter from the given choices directly."
MME_SUFFIX = "Please answer yes or no."
OCR_TOKEN_PREFIX = "Reference OCR token: "
OPTION_LETTERS = "ABCD"
CAPTION_PROMPT = "Describe the image briefly."

SQA_WARM_CONTEXT = (
    "Red, orange and yellow are warm colors. Blue, green, cyan and purple are cool colors."
)
SQA_SIDES_CONTEXT = (
    "A triangle has 3 straight sides. A square and a diamond have 4 straight sides. "
    "A pentagon has 5, a hexagon 6 and an arrow 7 straight sides. A star has 10 and a cross 12 "
    "straight sides. A circle and a ring have no straight sides."
)


def article(word: str) -> str:
    """'a' or 'an' for the noun phrase starting with ``word``."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def template_texts() -> list:
    """Every fixed word and prompt string of the playground (for the tokenizer corpus)."""
    words = list(COLORS) + list(SHAPES) + list(PLURALS.values()) + list(SIZES) + list(BACKGROUNDS)
    words += list(WORDS) + list(LETTERS) + list(DIGITS) + list(NUMBER_WORDS) + list(QUADRANTS)
    words += list(RELATIONS.values()) + list(DIRECTIONS) + ["warm", "cool", "yes", "no", "Yes", "No"]
    prompts = [SHORT_ANSWER, MC_ANSWER, MME_SUFFIX, OCR_TOKEN_PREFIX.strip(), CAPTION_PROMPT,
               SQA_WARM_CONTEXT, SQA_SIDES_CONTEXT]
    prompts += [f"{letter}. " for letter in OPTION_LETTERS]
    return words + prompts
