"""Integrations with other evaluation harnesses.

- ``lmms_eval``: the lmms-eval model ``llava_restore`` (``pip install -e ".[lmms]"``), registered
  through lmms-eval's entry-point group ``lmms_eval.models`` by :func:`lmms_eval_manifest`;
- ``lmms_tasks/``: lmms-eval task YAMLs for the playground's GQA- and POPE-style sets (local files,
  no hub); pass ``--include_path`` :data:`LMMS_TASKS_DIR`.

This module imports nothing heavy: lmms-eval loads every registered entry point on start-up.
"""
from __future__ import annotations

from pathlib import Path

LMMS_MODEL_NAME = "llava_restore"
LMMS_MODEL_CLASS = "llava_restore.integrations.lmms_eval.LlavaRestore"
LMMS_TASKS_DIR = Path(__file__).resolve().parent / "lmms_tasks"


def lmms_eval_manifest():
    """The payload of our ``lmms_eval.models`` entry point (lmms-eval's ``ModelManifest``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=LMMS_MODEL_NAME, simple_class_path=LMMS_MODEL_CLASS)
