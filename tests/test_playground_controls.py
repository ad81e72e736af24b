"""The playground's controls: the text-only prior and the blank-image folders."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from PIL import Image

from llava_restore.playground import controls
from llava_restore.playground.config import Sizes
from llava_restore.playground.data import build


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("pg")
    build(str(out), sizes=Sizes.tiny(), progress=False)
    return out / "eval"


def test_gqa_prior_is_the_majority_answer_per_type(eval_root):
    gt = json.loads((eval_root / "gqa/data/testdev_balanced_questions.json").read_text())
    by_type = {}
    for q in gt.values():
        by_type.setdefault(q["types"]["detailed"], []).append(q["answer"])
    hits = sum(Counter(a).most_common(1)[0][1] for a in by_type.values())
    prior = controls.gqa_prior(eval_root)
    assert prior["accuracy"] == round(100 * hits / len(gt), 2)
    assert set(prior["per_type"]) == set(by_type)


def test_pope_prior_answers_one_label_everywhere(eval_root):
    prior = controls.pope_prior(eval_root)  # POPE alternates yes / no: half right, F1 of all-"yes" is 2/3
    assert prior["mean_accuracy"] == 50.0 and prior["mean_f1"] == pytest.approx(66.67, abs=0.01)


def test_blank_folder_has_uniform_images_of_the_same_names_and_sizes(eval_root, tmp_path):
    src = eval_root / "pope/val2014"
    dst = controls.blank_folder(src, tmp_path / "blank")
    names = sorted(p.name for p in src.iterdir())
    assert sorted(p.name for p in dst.iterdir()) == names
    for name in names:
        with Image.open(src / name) as a, Image.open(dst / name) as b:
            assert a.size == b.size and b.getextrema() == tuple((v, v) for v in controls.BLANK_RGB)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        controls.blank_folder(tmp_path / "nowhere", tmp_path / "x")
