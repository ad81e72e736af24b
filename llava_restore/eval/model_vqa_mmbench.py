"""``python -m llava_restore.eval.model_vqa_mmbench``: MMBench generation, as LLaVA-1.5's.

Question file: the MMBench tsv (``index, question, hint, A..D, [answer], ..., image``) with the
image as base64 (a cell holding only another row's index reuses that row's image, as compact
tsvs do). Options are A, B, C, D up to the first empty one (pandas' NA strings count as empty);
the question is ``hint + "\\n" + question`` when the hint is not empty, then one
``"\\n<letter>. <option>"`` line per option. The user turn is ``"<image>\\n" + question`` plus, with
``--single-pred-prompt`` (LLaVA-1.5's mmbench.sh passes it), "\\nAnswer with the option's letter
from the given choices directly." (``--lang cn``: the Chinese instruction).
Answer: ``{question_id: index, round_id: 0, prompt: question, text, options, option_char,
answer_id, model_id, metadata}``. max_new_tokens defaults to 1024 (LLaVA hard-codes it).
LLaVA's ``--all-rounds`` (rotating options in-process) is not provided: the circular copies are
rows of the tsv.
"""
from __future__ import annotations

from typing import List

from llava_restore.eval.answers import read_questions
from llava_restore.eval.eval_mmbench import PANDAS_NA
from llava_restore.eval.generate import (Adapter, QuestionFileError, Sample, base64_image, check_question_file,
                                         cli_entry, require, run_cli, with_image_token)

OPTION_LETTERS = ("A", "B", "C", "D")
SINGLE_PRED = {"en": "Answer with the option's letter from the given choices directly.",
               "cn": "请直接回答选项字母。"}


def is_none(value) -> bool:
    """An empty cell as LLaVA sees it after pandas: a pandas NA string, or 'nan'/'none' in any case."""
    return value is None or value in PANDAS_NA or value.lower() in ("nan", "none")


def row_options(row: dict) -> List[str]:
    options = []
    for letter in OPTION_LETTERS:
        if letter not in row or is_none(row[letter]):
            break
        options.append(row[letter])
    return options


class MMBenchAdapter(Adapter):
    name = "mmbench"
    description = "LLaVA-1.5 MMBench answers (model_vqa_mmbench flags)"
    max_new_tokens = 1024

    def add_args(self, parser) -> None:
        parser.add_argument("--single-pred-prompt", action="store_true",
                            help="append LLaVA's answer-with-the-letter instruction (mmbench.sh passes it)")
        parser.add_argument("--lang", choices=sorted(SINGLE_PRED), default="en")

    def options(self, args) -> dict:
        return {"single_pred_prompt": args.single_pred_prompt, "lang": args.lang}

    def load(self, question_file: str, image_folder: str, single_pred_prompt: bool = False, lang: str = "en",
             **options) -> List[Sample]:
        path = check_question_file(question_file)
        rows = read_questions(path)
        if rows:
            absent = [c for c in ("index", "question", "image") if c not in rows[0]]
            if absent:
                raise QuestionFileError(f"{path}: the tsv header lacks column(s) {absent}")
        image_of = {row["index"]: row["image"] for row in rows}
        samples = []
        for i, row in enumerate(rows):
            where = f"{path}:{i + 2} (index {row.get('index')})"
            idx, question, image = require(row, ("index", "question", "image"), where)
            try:
                qid = int(idx)
            except ValueError:
                raise QuestionFileError(f"{where}: 'index' must be an integer, got {idx!r}") from None
            if image.isdigit() and image in image_of and image != idx:
                image = image_of[image]  # a reference to another row's image
            options = row_options(row)
            hint = row.get("hint")
            if hint is not None and not is_none(hint):
                question = f"{hint}\n{question}"
            for letter, option in zip(OPTION_LETTERS, options):
                question = f"{question}\n{letter}. {option}"
            qs = with_image_token(question)
            if single_pred_prompt:
                qs = f"{qs}\n{SINGLE_PRED[lang]}"
            samples.append(Sample(head={"question_id": qid, "round_id": 0, "prompt": question}, question=qs,
                                  image=base64_image(image, where), image_ref=f"{path} image of index {idx}",
                                  where=where, tail={"options": options,
                                                     "option_char": list(OPTION_LETTERS[:len(options)])}))
        return samples


ADAPTER = MMBenchAdapter()


def main(argv=None) -> dict:
    return run_cli(ADAPTER, argv)


if __name__ == "__main__":
    cli_entry(main)
