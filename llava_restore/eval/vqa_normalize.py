"""The EvalAI / VQA answer normaliser and the VQA soft accuracy, shared by TextVQA and VQAv2.

Behaviour matches the processor LLaVA uses (``m4c_evaluator.EvalAIAnswerProcessor``), quirks included:
1. lower-case; delete "," and "?"; "'s" -> " 's"; newlines/tabs -> spaces; strip;
2. each punctuation mark in PUNCTUATIONS is deleted if the (step-1) text has it next to a space
   (or has a digit,digit comma, which step 1 already removed), otherwise replaced by a space;
3. a "." not followed by a digit is deleted ("3.5" keeps its point). The original passes
   ``re.UNICODE`` (= 32) as the ``count`` argument of ``sub``, so only the first 32 such periods go;
4. split on whitespace; number words zero..ten and "none" -> digits; drop the articles a/an/the;
   restore apostrophes of known contractions ("dont" -> "don't"); join with single spaces.
"""
from __future__ import annotations

import re
from typing import Sequence

NUMBER_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATIONS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the "(?!<=" is a no-op lookahead in the original too
COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
PERIOD_STRIP_COUNT = int(re.UNICODE)  # the original's accidental `count` argument (32)

# Contraction table of the VQA evaluation (odd entries such as "somebody'd" -> "somebodyd" included).
_CONTRACTION_PAIRS = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've
couldnt've couldn't've|didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've
hadn'tve hadn't've|hasnt hasn't|havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's
howd how'd|howll how'll|hows how's|Id've I'd've|I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd
itd've it'd've|it'dve it'd've|itll it'll|let's let's|maam ma'am|mightnt mightn't
mightnt've mightn't've|mightn'tve mightn't've|mightve might've|mustnt mustn't|mustve must've
neednt needn't|notve not've|oclock o'clock|oughtnt oughtn't|ow's'at 'ow's'at|'ows'at 'ow's'at
'ow'sat 'ow's'at|shant shan't|shed've she'd've|she'dve she'd've|she's she's|shouldve should've
shouldnt shouldn't|shouldnt've shouldn't've|shouldn'tve shouldn't've|somebody'd somebodyd
somebodyd've somebody'd've|somebody'dve somebody'd've|somebodyll somebody'll|somebodys somebody's
someoned someone'd|someoned've someone'd've|someone'dve someone'd've|someonell someone'll
someones someone's|somethingd something'd|somethingd've something'd've|something'dve something'd've
somethingll something'll|thats that's|thered there'd|thered've there'd've|there'dve there'd've
therere there're|theres there's|theyd they'd|theyd've they'd've|they'dve they'd've|theyll they'll
theyre they're|theyve they've|twas 'twas|wasnt wasn't|wed've we'd've|we'dve we'd've|weve we've
werent weren't|whatll what'll|whatre what're|whats what's|whatve what've|whens when's|whered where'd
wheres where's|whereve where've|whod who'd|whod've who'd've|who'dve who'd've|wholl who'll|whos who's
whove who've|whyll why'll|whyre why're|whys why's|wont won't|wouldve would've|wouldnt wouldn't
wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all|yall'll y'all'll|y'allll y'all'll
yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd|youd've you'd've
you'dve you'd've|youll you'll|youre you're|youve you've
"""
CONTRACTIONS = dict(pair.split(" ") for pair in _CONTRACTION_PAIRS.replace("\n", "|").split("|") if pair)


def _tokenize(text: str) -> str:
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return text.strip().replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    has_digit_comma = COMMA_STRIP.search(text) is not None
    out = text
    for p in PUNCTUATIONS:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    words = [NUMBER_MAP.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """EvalAI answer normalisation (see module doc)."""
    return process_digit_article(process_punctuation(_tokenize(text)))


def vqa_soft_score(pred: str, gt_answers: Sequence[str]) -> float:
    """Mean over the leave-one-out subsets of min(1, #matching other answers / 3), in [0, 1].

    ``pred`` and ``gt_answers`` are compared after :func:`normalize_answer`. With the usual 10
    answers: 1 match -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0.
    """
    if not gt_answers:
        raise ValueError("vqa_soft_score needs at least one ground-truth answer")
    p = normalize_answer(pred)
    hits = [normalize_answer(a) == p for a in gt_answers]
    total_hits = sum(hits)
    return sum(min(1.0, (total_hits - h) / 3) for h in hits) / len(hits)
