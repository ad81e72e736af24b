"""LLaVA-style supervised data: conversation JSON (llava_v1_5_mix665k format) -> tokens + labels.

Labels are IGNORE_INDEX everywhere except the assistant turns (their text and the ``</s>`` that
closes them).  Every bad record fails naming its index and id.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from llava_restore.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava_restore.eval.answers import load_json_list
from llava_restore.model.conversation import get_conv_template
from llava_restore.model.mm_utils import load_image, pad_sequences, process_images, tokenizer_image_token

log = logging.getLogger(__name__)
ROLE_MAP = {"human": 0, "user": 0, "gpt": 1, "assistant": 1}


class DataError(ValueError):
    """A bad training record; the message names the file, the record index and its id."""


def load_conversations(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise DataError(f"training data file not found: {path}")
    return load_json_list(path, "a JSON list of records", DataError)


def _where(path, idx, rec) -> str:
    rid = rec.get("id", "?") if isinstance(rec, dict) else "?"
    return f"{path}: record {idx} (id={rid!r})"


def tokenize_conversation(turns: list[dict], tokenizer, conv_mode: str, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (L,), labels (L,)) for one conversation; supervised spans = assistant turns."""
    if not turns:
        raise DataError(f"{where}: empty conversation")
    conv = get_conv_template(conv_mode)
    spans = []  # (prompt up to the assistant's reply, prompt through the reply)
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(f"{where}: turn {t} lacks 'from'/'value'")
        role = ROLE_MAP.get(turn["from"])
        if role is None:
            raise DataError(f"{where}: turn {t} has unknown speaker {turn['from']!r}; known: {sorted(ROLE_MAP)}")
        if role != t % 2:
            raise DataError(f"{where}: turn {t} is from {turn['from']!r}; turns must alternate human/gpt starting with human")
        if role == 1:
            conv.append_message(conv.roles[1], None)
            before = conv.get_prompt()
            conv.messages[-1][1] = turn["value"]
            spans.append((before, conv.get_prompt()))
        else:
            conv.append_message(conv.roles[0], turn["value"])
    if not spans:
        raise DataError(f"{where}: conversation has no assistant (gpt) turn")
    full = conv.get_prompt()
    ids = tokenizer_image_token(full, tokenizer, return_tensors="pt")
    labels = torch.full_like(ids, IGNORE_INDEX)
    for before, through in spans:
        a = len(tokenizer_image_token(before, tokenizer))
        b = len(tokenizer_image_token(through, tokenizer))
        if b > ids.shape[0]:
            raise DataError(f"{where}: tokenisation of the assistant span is not a prefix of the full prompt")
        labels[a:b] = ids[a:b]
    return ids, labels


@dataclass
class Example:
    input_ids: torch.Tensor  # (L,)
    labels: torch.Tensor  # (L,)
    image: torch.Tensor | None  # (3, H, W)
    truncated: bool


class SupervisedDataset(Dataset):
    def __init__(self, data_path: str, image_folder: str, tokenizer, image_processor, conv_mode: str = "vicuna_v1",
                 max_length: int = 2048, image_aspect_ratio: str = "pad", check_images: bool = True,
                 records: list[dict] | None = None):
        """``records``: use these (already loaded or generated) instead of reading ``data_path``,
        which then only names them in errors."""
        self.path = data_path
        self.records = load_conversations(data_path) if records is None else records
        self.image_folder = image_folder
        self.tokenizer, self.processor = tokenizer, image_processor
        self.conv_mode, self.max_length, self.aspect = conv_mode, max_length, image_aspect_ratio
        self.n_truncated = 0
        for i, rec in enumerate(self.records):  # validate up front: fail before training starts
            where = _where(data_path, i, rec)
            if not isinstance(rec, dict) or "conversations" not in rec:
                raise DataError(f"{where}: lacks 'conversations'")
            turns = rec["conversations"]
            if not isinstance(turns, list) or not turns:
                raise DataError(f"{where}: empty conversation")
            if not any(ROLE_MAP.get(t.get("from")) == 1 for t in turns if isinstance(t, dict)):
                raise DataError(f"{where}: conversation has no assistant (gpt) turn")
            if "image" in rec:
                n_tok = sum(str(t.get("value", "")).count(DEFAULT_IMAGE_TOKEN) for t in turns)
                if n_tok != 1:
                    raise DataError(f"{where}: has an image but {n_tok} '<image>' placeholders (expected 1)")
                if check_images and not os.path.isfile(os.path.join(image_folder, rec["image"])):
                    raise DataError(f"{where}: image file not found: {os.path.join(image_folder, rec['image'])}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Example:
        rec = self.records[i]
        where = _where(self.path, i, rec)
        ids, labels = tokenize_conversation(rec["conversations"], self.tokenizer, self.conv_mode, where)
        truncated = ids.shape[0] > self.max_length
        if truncated:
            log.warning("%s: %d tokens truncated to max_length=%d", where, ids.shape[0], self.max_length)
            ids, labels = ids[: self.max_length], labels[: self.max_length]
            if "image" in rec and not bool((ids == IMAGE_TOKEN_INDEX).any()):
                raise DataError(f"{where}: truncation to max_length={self.max_length} cuts off the <image> "
                                f"placeholder; raise max_length")
        image = None
        if "image" in rec:
            try:
                img = load_image(os.path.join(self.image_folder, rec["image"]))
            except ValueError as exc:
                raise DataError(f"{where}: {exc}") from exc
            image = process_images([img], self.processor, self.aspect)[0]
        return Example(ids, labels, image, truncated)


class Collator:
    """Right-padded batches: input_ids, attention_mask, labels (B, L) and images (n_img, 3, H, W)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[Example]) -> dict:
        ids, mask = pad_sequences([e.input_ids for e in batch], self.pad_id, "right")
        labels, _ = pad_sequences([e.labels for e in batch], IGNORE_INDEX, "right")
        imgs = [e.image for e in batch if e.image is not None]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "images": torch.stack(imgs) if imgs else None, "n_truncated": sum(e.truncated for e in batch)}
