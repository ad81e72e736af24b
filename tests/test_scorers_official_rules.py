"""Scorer rules checked against the official scripts' behaviour (issue 16, items 4 and 5).

MMBench option matching is compared with a small reference written here from the 2023 MMBench
evaluator's rules (OpenCompass ``tools/eval_mmbench.py``: ``can_infer_option``, ``can_infer_text``),
on seeded fuzzed replies and on hand-written examples whose expected values follow from the rules.
The reference does not import the scorer's helpers.
"""
import json
import random

import pytest

from llava_restore.eval.answers import AnswerFileError
from llava_restore.eval.eval_mme import score_mme
from llava_restore.eval.eval_mmbench import match_option, score_mmbench
from llava_restore.eval.eval_seed import score_seed

# ----------------------------------------------------------------------------- reference (from the rules)

REF_LETTERS = ["A", "B", "C", "D", "E"]  # letters looked for, whatever the question's options
# (before, after) around a letter; the first entry is the bare letter, the rest are tried in order
REF_FORMS = [("", ""), ("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."),
             (":", ""), (":", ","), (":", "."), (":", ")"), (":", ").")]
REF_ARTICLE_WORDS = 3  # a lone bare "A" in a reply of more words than this is an article
REF_API_FAILURE = "Failed to obtain answer via API"


def ref_letter(reply, letters=REF_LETTERS, forms=REF_FORMS, article=True):
    """(letter, name of the rule that gave it) or (None, None). The keyword arguments exist only to
    build wrong variants (below) that the fuzz set must tell apart."""
    if REF_API_FAILURE in reply:
        return None, None
    words = reply.split()
    for n, (before, after) in enumerate(forms):
        hits = {c for c in letters if before + c + after in words}
        if article and n == 0 and hits == {"A"} and len(words) > REF_ARTICLE_WORDS:
            continue  # "A" read as an article: only the decorated forms may still give a letter
        if len(hits) == 1:
            return hits.pop(), f"{before}X{after}"
    return None, None


def ref_text(reply, options, fold_case=True):
    low = reply.lower() if fold_case else reply
    hits = [k for k in options if (options[k].lower() if fold_case else options[k]) in low]
    return hits[0] if len(hits) == 1 else None


def ref_infer(reply, options):
    """(letter or None, rule): the rule is a letter form, 'text' or 'unresolved'."""
    letter, rule = ref_letter(reply)
    if letter is not None:
        return letter, rule
    letter = ref_text(reply, options)
    return (letter, "text") if letter is not None else (None, "unresolved")


# ----------------------------------------------------------------------------- fuzzed replies

FUZZ_SEED = 2023
N_FUZZ = 600
MIN_COMMON_BRANCH = 30  # fuzzed replies that must reach each of: bare letter, option text, unresolved
MIN_RARE_BRANCH = 10  # ... the article rule, a letter outside the options
OPTION_POOL = ["horse", "goat", "cow", "sheep", "cows", "red one", "Blue Car", "a", "dog", "cat"]
FILLERS = ["the", "answer", "is", "I", "think", "option", "because", "not", "maybe", "It's", "a", "Answer:",
           "correct", "wrong.", "so", "and", "or"]
DECORATIONS = [f"{b}{{}}{a}" for b, a in REF_FORMS] + ["[{}]", "**{}**", "{};", "{}!", "({}", "{}/", "is:{}", "{}-"]
SEPARATORS = [" ", " ", " ", "  ", "\n", "\t", " \n"]


def fuzz_options(rng):
    texts = rng.sample(OPTION_POOL, rng.randint(2, 4))
    return {letter: text for letter, text in zip("ABCD", texts)}


def fuzz_piece(rng, options):
    kind = rng.random()
    if kind < 0.15:
        return rng.choice(REF_LETTERS)
    if kind < 0.5:
        return rng.choice(DECORATIONS).format(rng.choice(REF_LETTERS + ["a", "b", "Z"]))
    if kind < 0.65:
        text = rng.choice(list(options.values()) + OPTION_POOL)
        return rng.choice([text, text.upper(), text.capitalize(), text + ".", text + ","])
    return rng.choice(FILLERS)


def fuzz_reply(rng, options):
    pieces = [fuzz_piece(rng, options) for _ in range(rng.choice([1, 1, 2, 3, 4, 5, 8, 12]))]
    reply = pieces[0]
    for p in pieces[1:]:
        reply += rng.choice(SEPARATORS) + p
    return reply


def fuzz_cases():
    rng = random.Random(FUZZ_SEED)
    cases = []
    for _ in range(N_FUZZ):
        options = fuzz_options(rng)
        cases.append((fuzz_reply(rng, options), options))
    return cases


FUZZ = fuzz_cases()


def test_fuzzed_replies_match_the_reference():
    mismatches = [(r, o, match_option(r, dict(o)), ref_infer(r, o)[0]) for r, o in FUZZ
                  if match_option(r, dict(o)) != ref_infer(r, o)[0]]
    assert mismatches == []


def test_fuzzed_replies_reach_every_rule():
    """The fuzz set exercises each branch, so that the comparison above means something."""
    rules = [ref_infer(r, o)[1] for r, o in FUZZ]
    article = [r for r, o in FUZZ if [c for c in REF_LETTERS if c in r.split()] == ["A"]
               and len(r.split()) > REF_ARTICLE_WORDS]
    outside = [r for r, o in FUZZ if ref_infer(r, o)[0] is not None and ref_infer(r, o)[0] not in o]
    assert set(rules) == {f"{b}X{a}" for b, a in REF_FORMS} | {"text", "unresolved"}
    assert min(rules.count("X"), rules.count("text"), rules.count("unresolved")) >= MIN_COMMON_BRANCH
    assert min(len(article), len(outside)) >= MIN_RARE_BRANCH


def _vlmevalkit_later_rules(reply, options):
    """A plausible wrong implementation: punctuation stripped, letters among the options only, a
    refusal phrase gives Z, text only for replies at most twice the options' length."""
    for ch in ".()[],:;!*#{}":
        reply = reply.replace(ch, " ")
    words = reply.split()
    hits = [c for c in options if c in words]
    if len(hits) == 1:
        return None if "A" in words and len(words) > REF_ARTICLE_WORDS else hits[0]
    if len(reply) > 2 * sum(len(v) for v in options.values()):
        return None
    return ref_text(reply, options)


WRONG_VARIANTS = {
    "later VLMEvalKit rules": _vlmevalkit_later_rules,
    "no article rule": lambda r, o: ref_letter(r, article=False)[0] or ref_text(r, o),
    "letters among the options only": lambda r, o: ref_letter(r, letters=list(o))[0] or ref_text(r, o),
    "bare letters only": lambda r, o: ref_letter(r, forms=REF_FORMS[:1])[0] or ref_text(r, o),
    "no ':X' forms": lambda r, o: ref_letter(r, forms=REF_FORMS[:8])[0] or ref_text(r, o),
    "'(X)' before 'X.'": lambda r, o: ref_letter(r, forms=[REF_FORMS[0], REF_FORMS[6]] + REF_FORMS[1:6]
                                                 + REF_FORMS[7:])[0] or ref_text(r, o),
    "case-sensitive text": lambda r, o: ref_letter(r)[0] or ref_text(r, o, fold_case=False),
    "letters outside the options ignored": lambda r, o: (ref_letter(r)[0] if ref_letter(r)[0] in o
                                                         else ref_text(r, o)),
}


@pytest.mark.parametrize("name", sorted(WRONG_VARIANTS))
def test_fuzz_set_tells_wrong_implementations_apart(name):
    wrong = WRONG_VARIANTS[name]
    assert any(wrong(r, dict(o)) != ref_infer(r, o)[0] for r, o in FUZZ)


# ----------------------------------------------------------------------------- hand-written examples

FARM = {"A": "horse", "B": "goat", "C": "cow", "D": "sheep"}
LONG_HORSE = ("In the picture there is a large animal with long legs and a flowing mane standing in a green "
              "field next to a wooden fence; judging by its shape and size it is most likely a horse.")


@pytest.mark.parametrize("reply,options,expected", [
    ("A cow is eating grass", FARM, "C"),          # 5 words: "A" is an article -> option text "cow"
    ("I think it's B, because A is wrong.", FARM, "B"),  # bare "A" (article, 8 words), then "B," is unique
    (LONG_HORSE, FARM, "A"),                       # long reply quoting one option text
    ("The goat on the left", FARM, "B"),
    ("A", FARM, "A"), ("A.", FARM, "A"), ("Answer: A", FARM, "A"), ("A goat.", FARM, "A"),  # <= 3 words
    ("A big white goat", FARM, "B"),                # 4 words: article, then text
    ("The answer is A", FARM, None),                # article, no decorated letter, no option text
    ("The answer is A.", FARM, "A"),                # "A." identifies one letter
    ("The answer is (B).", FARM, "B"),
    ("B. goat, not C.", FARM, "B"),                 # "X." names two letters -> on to text: only goat
    ("(B) goat (C) cow", FARM, None),               # two "(X)", two option texts
    ("B or C", FARM, None),
    ("option :C", FARM, "C"), ("is:C", FARM, None),
    ("E", FARM, "E"),                               # a letter that is no option: a wrong answer
    ("a cow", FARM, "C"), ("b", FARM, None),        # lower-case letters are not letters
    ("Sorry, I can't help with images of people yet.", FARM, None),  # no refusal rule in 2023
    ("Z", FARM, None),
    ("two cats", {"A": "cat", "B": "cats"}, None),  # both option texts occur
    ("(D)", {"A": "cat", "B": "dog", "C": "cow"}, "D"),
])
def test_hand_written_examples(reply, options, expected):
    assert ref_infer(reply, options)[0] == expected  # the reference agrees with the rules as written
    assert match_option(reply, dict(options)) == expected


# ----------------------------------------------------------------------------- CircularEval on the new rules

TSV_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "split"]


def _write_mmbench(tmp_path, questions):
    """questions: {main index: [(options, answer, reply) per circular copy]}."""
    lines, answers = ["\t".join(TSV_COLUMNS)], []
    for main_idx, copies in questions.items():
        for k, (options, answer, reply) in enumerate(copies):
            idx = main_idx + k * 1_000_000
            cells = [options.get(c, "") for c in "ABCD"]
            lines.append("\t".join([str(idx), "q", ""] + cells + [answer, "cat1", "dev"]))
            answers.append({"question_id": idx, "text": reply})
    tsv = tmp_path / "mmb.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    af = tmp_path / "answers.jsonl"
    af.write_text("".join(json.dumps(a) + "\n" for a in answers))
    return af, tsv


def test_circular_eval_with_article_text_and_outside_letters(tmp_path):
    rotated = {"A": "goat", "B": "cow", "C": "sheep", "D": "horse"}
    af, tsv = _write_mmbench(tmp_path, {
        1: [(FARM, "C", "A cow is eating grass"), (rotated, "B", "A cow is eating grass")],  # both right
        2: [(FARM, "A", "E"), (rotated, "D", "D")],                     # E: wrong, not unresolved
        3: [(FARM, "B", "The answer is A"), (rotated, "A", "A")],      # unresolved + right: unresolved
        4: [(FARM, "D", "The answer is A"), (rotated, "C", "B")],      # unresolved + wrong: wrong
    })
    with pytest.warns(UserWarning, match="unresolved: 1 questions .*2 replies"):
        m = score_mmbench(af, tsv)
    assert m["circular_accuracy"] == pytest.approx(25.0) and m["n_questions"] == 4
    assert (m["n_unresolved"], m["n_unresolved_replies"], m["n_letter_not_an_option"]) == (1, 2, 1)
    assert m["single_accuracy"] == pytest.approx(25.0)


def test_mmbench_bad_inputs_name_the_place(tmp_path):
    af, tsv = _write_mmbench(tmp_path, {1: [(FARM, "C", "C")]})
    af.write_text(af.read_text() + json.dumps({"question_id": 1, "text": "B"}) + "\n")
    with pytest.raises(AnswerFileError, match=r"answers.jsonl:2: question_id 1 answered twice"):
        score_mmbench(af, tsv)
    tsv.write_text(tsv.read_text() + "2\tq\n")
    af.write_text(json.dumps({"question_id": 1, "text": "C"}) + "\n")
    with pytest.raises(AnswerFileError, match=r"mmb.tsv: data row 2: fewer tab-separated fields than the header"):
        score_mmbench(af, tsv)


# ----------------------------------------------------------------------------- SEED: where LLaVA raises KeyError

def _seed(tmp_path, questions, replies):
    ann = {"questions": [{"question_id": str(i), "answer": a, "data_type": d, "question_type_id": t}
                         for i, (a, d, t) in enumerate(questions, start=1)],
           "question_type": {"Scene": 1, "Action": 2, "Count": 3}}
    (tmp_path / "seed.json").write_text(json.dumps(ann))
    af = tmp_path / "a.jsonl"
    af.write_text("".join(json.dumps({"question_id": i, "text": t}) + "\n" for i, t in replies.items()))
    return af, tmp_path / "seed.json"


def test_seed_fully_answered_type_without_a_hit_warns_and_scores_zero(tmp_path):
    questions = [("A", "image", 1), ("B", "image", 1),    # Scene: answered, both wrong -> LLaVA KeyError
                 ("A", "image", 2), ("B", "image", 2),    # Action: one unanswered, none right -> no crash
                 ("C", "image", 3), ("D", "video", 3)]    # Count: image part wrong, video right
    af, ann = _seed(tmp_path, questions, {1: "B", 2: "A", 3: "C", 5: "A", 6: "D"})
    with pytest.warns(UserWarning, match="question type 'Scene' is fully answered with no correct answer"):
        m = score_seed(af, ann)
    assert m["per_question_type"] == {"Action": 0.0, "Count": 50.0, "Scene": 0.0}
    assert m["accuracy"] == pytest.approx(100 / 6)
    crash = [w for w in m["warnings"] if "KeyError" in w]
    assert len(crash) == 2
    assert "'Scene'" in crash[0] and "all/image questions" in crash[0]
    assert "'Count'" in crash[1] and "(image questions)" in crash[1]  # crashes in LLaVA's image-only pass
    assert not any("'Action'" in w for w in m["warnings"])


def test_seed_without_video_questions_warns_about_the_division_by_zero(tmp_path):
    af, ann = _seed(tmp_path, [("A", "image", 1)], {1: "A"})
    with pytest.warns(UserWarning, match="no 'video' questions"):
        m = score_seed(af, ann)
    assert m["video_accuracy"] is None and m["image_accuracy"] == pytest.approx(100.0)
    assert not any("KeyError" in w for w in m["warnings"])


def test_seed_bad_inputs_name_the_place(tmp_path):
    (tmp_path / "seed.json").write_text(json.dumps({"questions": [{"question_id": "1", "question_type_id": 1}]}))
    (tmp_path / "a.jsonl").write_text(json.dumps({"question_id": 1, "text": "A"}) + "\n")
    with pytest.raises(ValueError, match=r"seed.json: questions\[0\] lacks \['answer'\]"):
        score_seed(tmp_path / "a.jsonl", tmp_path / "seed.json")
    (tmp_path / "a.jsonl").write_text(json.dumps({"question_id": 1, "text": "A"}) + "\n"
                                      + json.dumps({"question_id": 2}) + "\n")
    with pytest.raises(AnswerFileError, match=r"a.jsonl:2: answer lacks \['text'\]"):
        score_seed(tmp_path / "a.jsonl")


# ----------------------------------------------------------------------------- MME: a lone carriage return

def test_mme_reply_with_a_carriage_return_warns_naming_the_question(tmp_path):
    gt_dir = tmp_path / "gt"
    (gt_dir / "existence").mkdir(parents=True)
    (gt_dir / "existence" / "000.txt").write_text("Is there a dog? Please answer yes or no.\tYes\n"
                                                  "Is there a cat? Please answer yes or no.\tNo\n")
    suffix = "\nAnswer the question using a single word or phrase."
    answers = [{"question_id": "existence/000.jpg", "prompt": "Is there a dog?" + suffix, "text": "Yes\rit is"},
               {"question_id": "existence/000.jpg", "prompt": "Is there a cat?" + suffix, "text": "No"}]
    af = tmp_path / "a.jsonl"
    af.write_text("".join(json.dumps(a) + "\n" for a in answers))
    with pytest.warns(UserWarning, match=r"carriage return"):
        m = score_mme(af, gt_dir)
    breaking = [w for w in m["warnings"] if "breaks LLaVA's txt" in w]
    assert len(breaking) == 1
    assert "'existence/000.jpg'" in breaking[0] and "Is there a dog?" in breaking[0]
    assert m["subtasks"]["existence"]["score"] == pytest.approx(200.0)  # still scored: "yes" prefix, right
