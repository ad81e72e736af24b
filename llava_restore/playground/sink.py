"""Writing the data set: every file goes through a ``Sink``, which records its sha256 for the
manifest and keeps the image hashes of the train and eval splits apart (to prove disjointness)."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Set

from llava_restore.playground.render import png_bytes, render
from llava_restore.playground.scene import Scene

STREAM_PREFIX = "llava-restore-playground"


def stream(seed: int, *names) -> random.Random:
    """An independent, reproducible RNG for one named stream (e.g. ('gqa', 'scene', 17)).

    ``random.Random`` seeded with a str hashes it with SHA-512, which is stable across Python
    versions and independent of PYTHONHASHSEED.
    """
    return random.Random("/".join([STREAM_PREFIX, str(seed)] + [str(n) for n in names]))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Sink:
    def __init__(self, root: Path, on_image: Optional[Callable[[], None]] = None) -> None:
        self.root = Path(root)
        self.files: Dict[str, str] = {}
        self.image_hashes: Dict[str, Set[str]] = {"train": set(), "eval": set()}
        self.on_image = on_image  # progress callback, called once per rendered image

    def bytes(self, rel: str, data: bytes) -> None:
        if rel in self.files:
            raise ValueError(f"{rel} was written twice in one build")
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files[rel] = sha256(data)

    def text(self, rel: str, s: str) -> None:
        self.bytes(rel, s.encode("utf-8"))

    def json(self, rel: str, obj, indent=None) -> None:
        self.text(rel, json.dumps(obj, indent=indent) + ("\n" if indent else ""))

    def jsonl(self, rel: str, rows: Iterable[dict]) -> None:
        self.text(rel, "".join(json.dumps(r) + "\n" for r in rows))

    def image_png(self, scene: Scene, split: str) -> bytes:
        """Render ``scene`` to PNG bytes and record its hash under ``split`` (train | eval)."""
        if split not in self.image_hashes:
            raise ValueError(f"unknown split {split!r}; known: {sorted(self.image_hashes)}")
        data = png_bytes(render(scene))
        self.image_hashes[split].add(sha256(data))
        if self.on_image is not None:
            self.on_image()
        return data

    def image(self, rel: str, scene: Scene, split: str) -> None:
        self.bytes(rel, self.image_png(scene, split))

    def check_disjoint(self) -> None:
        shared = self.image_hashes["train"] & self.image_hashes["eval"]
        if shared:
            raise RuntimeError(f"{len(shared)} eval images are pixel-identical to training images")
