"""Scorers on the real LLaVA-1.5-13B answer files: the figures the official scorers give on them."""
import json
import re
from pathlib import Path

import pytest

from llava_restore.eval.answers import merge_shards, question_keys, read_jsonl, read_questions
from llava_restore.eval.eval_gqa import convert_gqa_answers
from llava_restore.eval.eval_mmbench import score_mmbench
from llava_restore.eval.eval_mme import score_mme
from llava_restore.eval.eval_pope import score_pope
from llava_restore.eval.eval_science_qa import score_science_qa
from llava_restore.eval.eval_seed import score_seed
from llava_restore.eval.eval_textvqa import question_from_prompt

FIX = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "llava15-eval"
pytestmark = pytest.mark.skipif(not FIX.is_dir(), reason=f"LLaVA-1.5 eval fixtures not found at {FIX}")
ANSWERS = "answers-llava-v1.5-13b.jsonl"


def test_pope_per_category_f1_and_mean():
    d = FIX / "pope"
    m = score_pope(d / ANSWERS, d / "llava_pope_test.jsonl", d / "coco")
    f1 = {cat: round(c["f1"], 2) for cat, c in m["categories"].items()}
    assert f1 == {"adversarial": 84.46, "popular": 86.25, "random": 87.14}
    assert round(m["mean_f1"], 2) == 85.95
    assert round(m["mean_acc"], 2) == 86.98
    assert m["warnings"] == [] and m["n_skipped"] == 0


def test_mme_perception_and_cognition(tmp_path):
    d = FIX / "mme"
    m = score_mme(d / ANSWERS, d / "ground_truth", question_file=d / "llava_mme.jsonl", out_dir=tmp_path)
    assert round(m["perception"], 2) == 1531.32
    assert round(m["cognition"], 2) == 295.36
    assert len(m["subtasks"]) == 14 and m["warnings"] == []
    # LLaVA's converted txt: image<TAB>question<TAB>gt<TAB>reply, the two questions of an image adjacent
    lines = (tmp_path / "OCR.txt").read_text().splitlines()
    assert len(lines) == 40 and all(len(x.split("\t")) == 4 for x in lines)
    assert lines[0].split("\t")[0] == lines[1].split("\t")[0]


def _minimal_problems(question_file: Path) -> dict:
    """{id: {choices, answer}} from the question file: trailing 'X. ...' lines, letter of the gpt turn."""
    problems = {}
    for q in json.loads(question_file.read_text()):
        human, gpt = q["conversations"][0]["value"], q["conversations"][1]["value"]
        choices = []
        for line in reversed(human.split("\n")):
            m = re.match(r"^([A-E])\. (.*)$", line)
            if m is None:
                break
            choices.insert(0, m.group(2))
        problems[q["id"]] = {"choices": choices, "answer": "ABCDE".index(gpt)}
    return problems


def test_science_qa_img_accuracy(tmp_path):
    d = FIX / "scienceqa"
    (tmp_path / "problems.json").write_text(json.dumps(_minimal_problems(d / "llava_test_CQM-A.json")))
    (tmp_path / "pid_splits.json").write_bytes((d / "pid_splits.json").read_bytes())
    m = score_science_qa(d / ANSWERS, tmp_path, "test", output_result=tmp_path / "res.json")
    assert round(m["img_accuracy"], 2) == 71.64
    assert m["n_total"] == 4241 and m["n_missing"] == 0
    assert json.loads((tmp_path / "res.json").read_text())["count"] == 4241


def test_mmbench_circular_eval_and_submission(tmp_path):
    d = FIX / "mmbench"
    m = score_mmbench(d / ANSWERS, d / "mmbench_dev_20230712.tsv", upload_file=tmp_path / "sub.xlsx")
    assert round(m["circular_accuracy"], 2) == 67.69
    assert m["n_questions"] == 1176 and m["n_unresolved"] == 0
    assert (tmp_path / "sub.xlsx").stat().st_size > 0


def test_textvqa_prompts_give_the_question():
    d = FIX / "textvqa"
    questions = read_jsonl(d / "llava_textvqa_val_v051_ocr.jsonl")
    answers = read_jsonl(d / ANSWERS)
    assert len(answers) == len(questions) == 5000
    for q, a in zip(questions, answers):
        assert question_from_prompt(a["prompt"]) == q["text"].split("\n")[0].lower()


def test_gqa_conversion_format():
    answers = read_jsonl(FIX / "gqa" / ANSWERS)
    preds = convert_gqa_answers(answers)
    assert len(preds) == 12578 and preds[0] == {"questionId": "201307251", "prediction": "no"}
    assert all(p["prediction"] == p["prediction"].lower() and not p["prediction"].endswith(".") for p in preds)


def test_seed_submission_format_roundtrip(tmp_path):
    upload = FIX / "seed_bench" / "upload-llava-v1.5-13b.jsonl"
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": r["question_id"], "text": r["prediction"]}) + "\n"
                               for r in read_jsonl(upload)))
    score_seed(answers, upload_file=tmp_path / "upload.jsonl")
    assert (tmp_path / "upload.jsonl").read_text() == upload.read_text()


def test_merge_of_real_pope_shards_restores_the_answer_file(tmp_path):
    d = FIX / "pope"
    lines = (d / ANSWERS).read_text().splitlines(keepends=True)
    shards = [tmp_path / f"{k}.jsonl" for k in range(3)]
    for k, s in enumerate(shards):  # LLaVA-style contiguous chunks, written in reverse order
        s.write_text("".join(lines[k * 2970:(k + 1) * 2970]))
    keys = question_keys(read_questions(d / "llava_pope_test.jsonl"))
    assert merge_shards(shards[::-1], tmp_path / "merged.jsonl", keys) == 8910
    assert (tmp_path / "merged.jsonl").read_text() == (d / ANSWERS).read_text()
