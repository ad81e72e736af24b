"""The playground: synthetic images and questions in LLaVA's training and evaluation formats.

``python -m llava_restore.playground build`` writes ``playground/data``; see ``data.build``.
"""
from llava_restore.playground.config import Sizes
from llava_restore.playground.data import (
    DEFAULT_OUT, IMAGE_FOLDERS, QUESTION_FILES, build, corpus_texts, read_manifest, status, verify,
)
from llava_restore.playground.train_data import IMAGE_FOLDER, TRAIN_JSON

__all__ = ["Sizes", "build", "corpus_texts", "read_manifest", "status", "verify", "DEFAULT_OUT",
           "QUESTION_FILES", "IMAGE_FOLDERS", "TRAIN_JSON", "IMAGE_FOLDER"]
