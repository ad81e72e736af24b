"""The generation adapters rebuild the ``prompt`` (and MMBench option) fields of LLaVA-1.5's released
answer files from the real question files, and their answer keys cover those answers exactly once."""
from pathlib import Path

import pytest

from llava_restore.eval import model_vqa_loader, model_vqa_mmbench, model_vqa_science
from llava_restore.eval.answers import read_jsonl
from llava_restore.eval.generate import assign_keys

FIX = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "llava15-eval"
pytestmark = pytest.mark.skipif(not FIX.is_dir(), reason=f"LLaVA-1.5 eval fixtures not found at {FIX}")
ANSWERS = "answers-llava-v1.5-13b.jsonl"


def check_keys(samples, question_file, answers):
    key_fn = assign_keys(samples, question_file)
    assert sorted(map(repr, (key_fn(a) for a in answers))) == sorted(repr(s.key) for s in samples)
    return key_fn


@pytest.mark.parametrize("folder,qfile,compound", [
    ("pope", "llava_pope_test.jsonl", False), ("gqa", "llava_gqa_testdev_balanced.jsonl", False),
    ("mme", "llava_mme.jsonl", True), ("textvqa", "llava_textvqa_val_v051_ocr.jsonl", True)])
def test_loader_prompts_and_keys(folder, qfile, compound):
    qf = FIX / folder / qfile
    samples = model_vqa_loader.ADAPTER.load(str(qf), "")
    answers = read_jsonl(FIX / folder / ANSWERS)
    assert [s.head for s in samples] == [{"question_id": a["question_id"], "prompt": a["prompt"]} for a in answers]
    assert all(s.question == "<image>\n" + s.head["prompt"] for s in samples)
    key_fn = check_keys(samples, qf, answers)
    assert isinstance(key_fn(answers[0]), tuple) == compound  # MME/TextVQA repeat question ids


def test_science_prompts_match_llava():
    qf = FIX / "scienceqa" / "llava_test_CQM-A.json"
    samples = model_vqa_science.ADAPTER.load(str(qf), "", single_pred_prompt=True)
    answers = {a["question_id"]: a for a in read_jsonl(FIX / "scienceqa" / ANSWERS)}
    assert all(s.head["prompt"] == answers[s.head["question_id"]]["prompt"] for s in samples)
    with_image = [s for s in samples if s.image is not None]
    assert 0 < len(with_image) < len(samples)
    assert all(s.head["prompt"].startswith("<image>\n") == (s.image is not None) for s in samples)


def test_mmbench_prompts_and_options_match_llava():
    qf = FIX / "mmbench" / "mmbench_dev_20230712.tsv"
    samples = model_vqa_mmbench.ADAPTER.load(str(qf), "", single_pred_prompt=True)
    answers = {a["question_id"]: a for a in read_jsonl(FIX / "mmbench" / ANSWERS)}
    assert len(samples) == len(answers) == 4377
    for s in samples:
        a = answers[s.head["question_id"]]
        assert (s.tail["options"], s.tail["option_char"]) == (a["options"], a["option_char"])
        # the fixture replaces each hint by the placeholder "x": compare what follows it
        body = s.head["prompt"].split("\n", 1)[1]
        assert a["prompt"] == body or a["prompt"].endswith("\n" + body)
        assert s.question.endswith("\nAnswer with the option's letter from the given choices directly.")
