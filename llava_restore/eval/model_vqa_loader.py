"""``python -m llava_restore.eval.model_vqa_loader``: LLaVA-1.5's generic VQA generation CLI.

Used for GQA, POPE, MME, TextVQA, SEED-Bench and VQAv2 (as LLaVA's scripts do). Question file:
JSONL records ``{question_id, image, text, ...}``; the user turn is ``"<image>\\n" + text``; the
answer record is ``{question_id, prompt: text, text, answer_id, model_id, metadata}``.
max_new_tokens defaults to 128 (LLaVA's). Flags: see ``--help`` and docs/eval.md.
"""
from __future__ import annotations

from typing import List

from llava_restore.eval.answers import iter_jsonl
from llava_restore.eval.generate import (Adapter, Sample, check_question_file, cli_entry, file_image, require,
                                         run_cli, with_image_token)


class LoaderAdapter(Adapter):
    name = "loader"
    description = "LLaVA-1.5 VQA answers (GQA, POPE, MME, TextVQA, SEED, VQAv2): model_vqa_loader flags"
    max_new_tokens = 128

    def load(self, question_file: str, image_folder: str, **options) -> List[Sample]:
        path = check_question_file(question_file)
        samples = []
        for lineno, _, rec in iter_jsonl(path):
            where = f"{path}:{lineno}"
            qid, text, image = require(rec, ("question_id", "text", "image"), where)
            load, ref = file_image(image_folder, image)
            samples.append(Sample(head={"question_id": qid, "prompt": text}, question=with_image_token(text),
                                  image=load, image_ref=ref, where=where))
        return samples


ADAPTER = LoaderAdapter()


def main(argv=None) -> dict:
    return run_cli(ADAPTER, argv)


if __name__ == "__main__":
    cli_entry(main)
