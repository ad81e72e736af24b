"""Scoring rules and answer-file integrity, on tiny hand-made inputs (expected values derived by hand)."""
import json
import zipfile
import xml.etree.ElementTree as ET

import pytest

from llava_restore.eval.answers import (AnswerFileError, AnswerWriter, DuplicateAnswerError, MergeError,
                                        TruncatedAnswerWarning, load_answered, merge_shards,
                                        question_id_prompt_key, read_jsonl)
from llava_restore.eval.eval_gqa import score_gqa
from llava_restore.eval.eval_mmbench import match_option, score_mmbench
from llava_restore.eval.eval_mme import parse_mme_reply
from llava_restore.eval.eval_ocrbench import score_ocrbench
from llava_restore.eval.eval_pope import main as pope_main
from llava_restore.eval.eval_pope import parse_yes_no, score_pope
from llava_restore.eval.eval_science_qa import parse_sqa_answer, pred_index, score_science_qa
from llava_restore.eval.eval_seed import score_seed
from llava_restore.eval.eval_textvqa import score_textvqa
from llava_restore.eval.eval_vqav2 import score_vqav2
from llava_restore.eval.registry import get_scorer, get_scorer_main
from llava_restore.eval.vqa_normalize import normalize_answer, vqa_soft_score
from llava_restore.eval.xlsx import column_letter, write_xlsx

NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ----------------------------------------------------------------------------- normaliser

@pytest.mark.parametrize("raw,expected", [
    ("Two", "2"), ("none", "0"), ("an apple", "apple"),
    ("The cat's toy.", "cat 's toy"),      # "'s" split off, article dropped, final period deleted
    ("3.5", "3.5"), ("e.g.", "eg"),        # a period before a digit stays
    ("1,000", "1000"), ("What?", "what"), ("Yes!", "yes"),
    ("dont", "don't"), ("somebody'd", "somebodyd"),  # the table's odd entry, kept
    ("a-b", "b"),                          # "-" not next to a space -> space, then "a" is an article
    ("hello - world", "hello world"),      # "-" next to a space -> deleted
    ("Tab\tand\nnewline", "tab and newline"),
    ("." * 40 + "x", "." * 8 + "x"),       # only the first 32 periods go (count=re.UNICODE quirk)
])
def test_evalai_normaliser(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("n_match,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_soft_score_leave_one_out(n_match, expected):
    gts = ["Red."] * n_match + ["blue"] * (10 - n_match)  # "Red." normalises to "red"
    assert vqa_soft_score("RED", gts) == pytest.approx(expected)


# ----------------------------------------------------------------------------- yes/no and letters

@pytest.mark.parametrize("text,expected", [
    ("No", "no"), ("no.", "no"), ("Yes", "yes"), ("No, there is not.", "no"),
    ("Yes, there is no dog", "no"),            # any No/no/not word in the first sentence
    ("There is a dog. It is not a cat.", "yes"),  # only the first sentence counts
    ("Not at all", "yes"), ("NO", "yes"), ("Nope", "yes"),  # exact words only
    ("no,there", "yes"),                       # commas are deleted, not split on
])
def test_pope_yes_no(text, expected):
    assert parse_yes_no(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("A", "A"), ("A. chiasmus", "A"), ("A. ", "A"), ("The answer is B.", "B"), ("Thus The answer is C!", "C"),
    ("A.", "FAILED"), ("The answer is B", "FAILED"), ("(A)", "FAILED"), (" A", "FAILED"), ("a", "FAILED"),
    ("The answer is A. The answer is B.", "FAILED"),  # two matches
])
def test_sqa_letter_parsing(text, expected):
    assert parse_sqa_answer(text) == expected


def test_sqa_letter_beyond_choices_is_wrong():
    assert pred_index("C", 3) == 2 and pred_index("D", 3) == -1 and pred_index("FAILED", 3) == -1


@pytest.mark.parametrize("text,expected", [
    ("Yes", "yes"), ("No", "no"), ("Not sure", "no"), ("Yesterday", "yes"), ("I think yes", "other"), ("", "other"),
])
def test_mme_reply_parsing(text, expected):
    assert parse_mme_reply(text) == expected


CHOICES = {"A": "cat", "B": "dog", "C": "red one"}


@pytest.mark.parametrize("reply,expected", [
    ("B", "B"), ("(C) red one", "C"), ("The answer is A.", "A"),
    ("It is a dog", "B"),                       # no letter token -> option text
    ("A or B", None),                           # two letters, no option text
    ("this is a very long reply that mentions a dog", "B"),  # the 2023 rules have no length limit on text
    ("Sorry, I can't help with images of people yet.", None), ("Z", None),  # no refusal rule in 2023: ChatGPT
    ("I don't know", None),
])
def test_mmbench_option_matching(reply, expected):
    assert match_option(reply, dict(CHOICES)) == expected


# ----------------------------------------------------------------------------- scorers on tiny inputs

def _pope_files(tmp_path, texts):
    labels = ["yes", "no", "yes", "no"]
    qf = write_jsonl(tmp_path / "q.jsonl", [{"question_id": i + 1, "text": "?", "category": "random"} for i in range(4)])
    (tmp_path / "coco").mkdir()
    write_jsonl(tmp_path / "coco" / "coco_pope_random.json", [{"label": y} for y in labels])
    af = write_jsonl(tmp_path / "a.jsonl", [{"question_id": q, "text": t} for q, t in texts])
    return af, qf, tmp_path / "coco"


def test_pope_metrics_and_skipped_count(tmp_path):
    af, qf, ann = _pope_files(tmp_path, [(1, "Yes"), (2, "No"), (3, "No"), (4, "Yes, there is no dog")])
    write_jsonl(tmp_path / "errors.jsonl", [{"question_id": 9, "error": "missing image"}] * 2)
    m = pope_main(["--annotation-dir", str(ann), "--question-file", str(qf), "--result-file", str(af)])
    c = m["categories"]["random"]  # preds 1,0,0,0 vs labels 1,0,1,0: TP 1, TN 2, FN 1
    assert (c["TP"], c["FP"], c["TN"], c["FN"]) == (1, 0, 2, 1)
    assert c["acc"] == pytest.approx(75.0) and c["precision"] == pytest.approx(100.0)
    assert c["recall"] == pytest.approx(50.0) and c["f1"] == pytest.approx(200 / 3)
    assert c["yes_ratio"] == pytest.approx(25.0) and m["n_skipped"] == 2


def test_pope_never_yes_gives_undefined_f1_with_a_warning(tmp_path):
    af, qf, ann = _pope_files(tmp_path, [(1, "No"), (2, "No"), (3, "No"), (4, "No")])
    with pytest.warns(UserWarning, match="F1 is undefined .*no yes answers"):
        m = score_pope(af, qf, ann)
    c = m["categories"]["random"]
    assert c["precision"] is None and c["f1"] is None and c["acc"] == pytest.approx(50.0)
    assert m["mean_f1"] is None and m["mean_acc"] == pytest.approx(50.0)
    assert any("mean_f1 is undefined" in w for w in m["warnings"])


def test_pope_count_mismatch_warns_and_keeps_official_number(tmp_path):
    af, qf, ann = _pope_files(tmp_path, [(1, "Yes"), (3, "No"), (4, "Yes")])
    with pytest.warns(UserWarning, match="3 answers vs 4 labels"):
        m = score_pope(af, qf, ann)
    c = m["categories"]["random"]
    assert (c["TP"], c["FP"], c["TN"], c["FN"]) == (2, 0, 1, 0)  # official: zip by position
    b = c["by_question_id"]  # q1 yes/yes, q3 no/yes, q4 yes/no
    assert (b["TP"], b["FP"], b["TN"], b["FN"]) == (1, 1, 0, 1)


def test_mmbench_circular_eval_and_xlsx(tmp_path):
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "source", "l2-category",
            "comment", "split", "image"]
    rows, replies = [], {}
    for q, (r0, r1) in {1: ("A", "B"), 2: ("A", "A"), 3: ("maybe", "B"), 4: ("maybe", "A")}.items():
        rows.append([q, f"q{q}", "", "cat", "dog", "", "", "A", "c", "s", "l2", "", "dev", "img"])
        rows.append([q + 1_000_000, f"q{q}", "", "dog", "cat", "", "", "B", "c", "s", "l2", "", "dev", "img"])
        replies[q], replies[q + 1_000_000] = r0, r1
    tsv = tmp_path / "mmb.tsv"
    tsv.write_text("\t".join(cols) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    af = write_jsonl(tmp_path / "a.jsonl", [{"question_id": k, "text": v} for k, v in replies.items()])
    with pytest.warns(UserWarning, match="1 questions have a reply no rule could match"):
        m = score_mmbench(af, tsv, upload_file=tmp_path / "sub.xlsx")
    # q1 both right; q2 copy wrong; q3 unresolved + right (unresolved); q4 unresolved + wrong (just wrong)
    assert m["circular_accuracy"] == pytest.approx(25.0) and m["n_unresolved"] == 1
    assert m["single_accuracy"] == pytest.approx(50.0)
    with zipfile.ZipFile(tmp_path / "sub.xlsx") as z:
        assert z.testzip() is None
        assert {"[Content_Types].xml", "_rels/.rels", "xl/workbook.xml", "xl/_rels/workbook.xml.rels",
                "xl/worksheets/sheet1.xml"} <= set(z.namelist())
        sheet = ET.fromstring(z.read("xl/worksheets/sheet1.xml"))
    xml_rows = sheet.findall("m:sheetData/m:row", NS)
    header = [c.findtext("m:is/m:t", namespaces=NS) for c in xml_rows[0]]
    assert header == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    first = {c.get("r"): c for c in xml_rows[1]}
    assert first["A2"].findtext("m:v", namespaces=NS) == "1"
    assert first["G2"].findtext("m:is/m:t", namespaces=NS) == "A"
    assert "E2" not in first  # empty option C -> empty cell
    assert len(xml_rows) == 9


def test_xlsx_writer_escapes_and_column_letters(tmp_path):
    assert [column_letter(i) for i in (0, 25, 26, 701, 702)] == ["A", "Z", "AA", "ZZ", "AAA"]
    write_xlsx(tmp_path / "t.xlsx", ["a"], [["<&>\x01"], [2.5], [None]])
    with zipfile.ZipFile(tmp_path / "t.xlsx") as z:
        sheet = ET.fromstring(z.read("xl/worksheets/sheet1.xml"))
    cells = sheet.findall("m:sheetData/m:row/m:c", NS)
    assert cells[1].findtext("m:is/m:t", namespaces=NS) == "<&>" and cells[2].findtext("m:v", namespaces=NS) == "2.5"
    assert len(cells) == 3


def test_science_qa_missing_answer_is_failed_and_not_an_image_question(tmp_path):
    (tmp_path / "problems.json").write_text(json.dumps({"1": {"choices": ["x", "y"], "answer": 1},
                                                        "2": {"choices": ["x", "y", "z"], "answer": 0},
                                                        "3": {"choices": ["p", "q"], "answer": 0}}))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3"]}))
    af = write_jsonl(tmp_path / "a.jsonl", [{"question_id": "1", "prompt": "<image>\nQ", "text": "B"},
                                            {"question_id": "2", "prompt": "Q", "text": "The answer is A."}])
    with pytest.warns(UserWarning, match="1 of 3 problems unanswered"):
        m = score_science_qa(af, tmp_path)
    assert m["accuracy"] == pytest.approx(200 / 3) and m["img_accuracy"] == pytest.approx(100.0)
    assert m["n_img"] == 1 and m["n_missing"] == 1


def test_gqa_exact_match_after_rstrip_and_lower(tmp_path):
    qs = {"1": {"answer": "yes", "types": {"structural": "verify"}},
          "2": {"answer": "red car", "types": {"structural": "query"}},
          "3": {"answer": "no", "isBalanced": False, "types": {"structural": "verify"}}}
    (tmp_path / "q.json").write_text(json.dumps(qs))
    af = write_jsonl(tmp_path / "a.jsonl", [{"question_id": "1", "text": "Yes."}, {"question_id": "2", "text": "A red car."},
                                            {"question_id": "3", "text": "Yes"}])
    m = score_gqa(af, tmp_path / "q.json", tmp_path / "pred.json")
    assert m["accuracy"] == pytest.approx(50.0) and m["n_questions"] == 2  # unbalanced q3 not scored
    assert m["binary_accuracy"] == pytest.approx(100.0) and m["open_accuracy"] == pytest.approx(0.0)
    assert json.loads((tmp_path / "pred.json").read_text())[1] == {"questionId": "2", "prediction": "a red car"}


def test_textvqa_and_vqav2_use_the_soft_score(tmp_path):
    gts = ["coca cola"] * 3 + ["pepsi"] * 7
    (tmp_path / "tv.json").write_text(json.dumps({"data": [{"image_id": "img1", "question": "What is it?",
                                                             "answers": gts, "question_id": 7}]}))
    af = write_jsonl(tmp_path / "tv.jsonl", [{"question_id": "img1", "text": "Coca Cola",
                                              "prompt": "What is it?\nReference OCR token: COCA\nAnswer briefly."}])
    assert score_textvqa(af, tmp_path / "tv.json")["accuracy"] == pytest.approx(90.0)
    qf = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "text": "?"}, {"question_id": 2, "text": "?"}])
    af = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "text": "Two"}])
    ann = {"annotations": [{"question_id": 1, "answers": [{"answer": "2"}] * 10, "answer_type": "number"},
                           {"question_id": 2, "answers": [{"answer": "no"}] * 10, "answer_type": "yes/no"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    with pytest.warns(UserWarning, match="1 of 2 questions unanswered"):
        m = score_vqav2(af, qf, tmp_path / "sub.json", tmp_path / "ann.json")
    assert json.loads((tmp_path / "sub.json").read_text()) == [{"question_id": 1, "answer": "2"},
                                                               {"question_id": 2, "answer": ""}]
    assert m["accuracy"] == pytest.approx(50.0) and m["accuracy_per_answer_type"]["number"] == pytest.approx(100.0)


def test_seed_exact_letter_and_submission(tmp_path):
    ann = {"questions": [{"question_id": "1", "answer": "A", "data_type": "image", "question_type_id": 1},
                         {"question_id": "2", "answer": "B", "data_type": "image", "question_type_id": 1},
                         {"question_id": "3", "answer": "C", "data_type": "video", "question_type_id": 2}],
           "question_type": {"Scene": 1, "Action": 2}}
    (tmp_path / "seed.json").write_text(json.dumps(ann))
    af = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "text": "A"}, {"question_id": "2", "text": "B."}])
    with pytest.warns(UserWarning, match="1 of 3 questions unanswered"):
        m = score_seed(af, tmp_path / "seed.json", tmp_path / "up.jsonl")
    assert m["image_accuracy"] == pytest.approx(50.0) and m["video_accuracy"] == pytest.approx(0.0)
    assert m["accuracy"] == pytest.approx(100 / 3) and m["per_question_type"] == {"Action": 0.0, "Scene": 50.0}
    assert read_jsonl(tmp_path / "up.jsonl") == [{"question_id": "1", "prediction": "A"},
                                                 {"question_id": "2", "prediction": "B."}]


def test_ocrbench_substring_rule(tmp_path):
    items = [{"type": "Regular Text Recognition", "dataset_name": "IIIT5K", "answers": "CENTRE"},
             {"type": "Handwritten Mathematical Expression Recognition", "dataset_name": "HME100k", "answers": ["x ^ 2"]},
             {"type": "Handwritten Mathematical Expression Recognition", "dataset_name": "HME100k", "answers": ["X^2"]},
             {"type": "Doc-oriented VQA", "dataset_name": "DocVQA", "answers": ["foo", "bar"]},
             {"type": "Scene Text-centric VQA", "dataset_name": "TextVQA", "answers": ["y"]}]
    (tmp_path / "ocr.json").write_text(json.dumps(items))
    af = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 0, "text": "The word is centre."},
                                            {"question_id": 1, "text": "x^2+1"},   # spaces removed -> match
                                            {"question_id": 2, "text": "x^2"},     # case kept for HME -> no match
                                            {"question_id": 3, "text": "BAR!"}])
    with pytest.warns(UserWarning, match="1 of 5 questions unanswered"):
        m = score_ocrbench(af, tmp_path / "ocr.json")
    assert m["text_recognition"] == 1 and m["handwritten_mathematical_expression_recognition"] == 1
    assert m["doc_oriented_vqa"] == 1 and m["final_score"] == 3 and m["n_questions"] == 5


def test_registry_names_known_benchmarks():
    assert get_scorer("pope") is score_pope
    assert get_scorer_main("pope") is pope_main
    with pytest.raises(ValueError, match="unknown benchmark 'popee'.*gqa.*mmbench.*pope"):
        get_scorer("popee")


# ----------------------------------------------------------------------------- answer files

def test_read_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "answers.jsonl"
    p.write_text('{"question_id": 1}\n{"question_id": 2,\n{"question_id": 3}\n')
    with pytest.raises(AnswerFileError, match=r"answers\.jsonl:2: malformed JSON"):
        read_jsonl(p)


def test_load_answered_cuts_a_truncated_last_line(tmp_path):
    p = tmp_path / "a.jsonl"
    good = '{"question_id": 1, "text": "a"}\n{"question_id": 2, "text": "b"}\n'
    p.write_text(good + '{"question_id": 3, "te')
    with pytest.warns(TruncatedAnswerWarning, match="line 3"):
        assert load_answered(p) == {1, 2}
    assert p.read_text() == good
    p.write_text(good + "{garbage\n")  # invalid last line even with a newline
    with pytest.warns(TruncatedAnswerWarning):
        assert load_answered(p) == {1, 2}
    assert p.read_text() == good


def test_load_answered_raises_on_bad_middle_line_and_duplicates(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"question_id": 1}\nnot json\n{"question_id": 3}\n')
    with pytest.raises(AnswerFileError, match=r"a\.jsonl:2"):
        load_answered(p)
    p.write_text('{"question_id": 1}\n{"question_id": 2}\n{"question_id": 1}\n')
    with pytest.raises(DuplicateAnswerError, match=r"a\.jsonl:3: question 1 is already answered on line 1"):
        load_answered(p)


def test_answer_writer_resumes_and_refuses_duplicates(tmp_path):
    p = tmp_path / "run" / "a.jsonl"
    with AnswerWriter(p) as w:
        w.write({"question_id": 1, "text": "a"})
        w.write({"question_id": 2, "text": "b"})
        with pytest.raises(DuplicateAnswerError, match="2"):
            w.write({"question_id": 2, "text": "again"})
    with open(p, "a") as f:
        f.write('{"question_id": 3, "te')  # a killed run
    with pytest.warns(TruncatedAnswerWarning):
        w = AnswerWriter(p)
    assert w.answered == {1, 2} and 2 in w and 3 not in w
    w.write({"question_id": 3, "text": "c"})
    w.close()
    assert [r["question_id"] for r in read_jsonl(p)] == [1, 2, 3]


def test_merge_names_missing_ids_and_missing_shard(tmp_path):
    a = write_jsonl(tmp_path / "0.jsonl", [{"question_id": i} for i in (1, 2)])
    b = tmp_path / "1.jsonl"  # never written
    with pytest.raises(MergeError) as err:
        merge_shards([a, b], tmp_path / "m.jsonl", [1, 2, 3, 4, 5])
    msg = str(err.value)
    assert f"missing shard files: {b}" in msg and "3 of 5 question ids have no answer: 3, 4, 5" in msg
    assert not (tmp_path / "m.jsonl").exists()


def test_merge_lists_first_20_missing_and_count(tmp_path):
    a = write_jsonl(tmp_path / "0.jsonl", [{"question_id": 0}])
    with pytest.raises(MergeError, match=r"30 of 31 question ids have no answer: 1, 2, .*, 20, \.\.\. and 10 more"):
        merge_shards([a], tmp_path / "m.jsonl", list(range(31)))


def test_merge_names_duplicates_and_keeps_question_order(tmp_path):
    a = write_jsonl(tmp_path / "0.jsonl", [{"question_id": 3}, {"question_id": 1}])
    b = write_jsonl(tmp_path / "1.jsonl", [{"question_id": 2}, {"question_id": 1}])
    with pytest.raises(MergeError, match=r"1 question ids are answered more than once: 1 at .*0\.jsonl:2, .*1\.jsonl:2"):
        merge_shards([a, b], tmp_path / "m.jsonl", [1, 2, 3])
    b = write_jsonl(tmp_path / "1.jsonl", [{"question_id": 2}])
    assert merge_shards([a, b], tmp_path / "m.jsonl", [1, 2, 3]) == 3
    assert [r["question_id"] for r in read_jsonl(tmp_path / "m.jsonl")] == [1, 2, 3]


def test_merge_with_repeated_question_ids_needs_compound_key(tmp_path):
    qs = [{"question_id": "x/1.png", "text": "Q1"}, {"question_id": "x/1.png", "text": "Q2"}]
    a = write_jsonl(tmp_path / "0.jsonl", [{"question_id": "x/1.png", "prompt": q["text"]} for q in qs])
    with pytest.raises(MergeError, match="compound key"):
        merge_shards([a], tmp_path / "m.jsonl", [q["question_id"] for q in qs])
    keys = [question_id_prompt_key(q) for q in qs]
    assert merge_shards([a], tmp_path / "m.jsonl", keys, key=question_id_prompt_key) == 2
