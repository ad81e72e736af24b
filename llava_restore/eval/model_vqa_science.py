"""``python -m llava_restore.eval.model_vqa_science``: ScienceQA generation, as LLaVA-1.5's.

Question file: the JSON list ``llava_test_CQM-A.json`` of ``{id, image?, conversations}``. The
question is the first turn without "<image>", stripped; a record with ``image`` gets
``"<image>\\n"`` in front (in the prompt field too), a record without is asked as text only
(batches may mix both). ``--single-pred-prompt`` (LLaVA-1.5's sqa.sh passes it) appends
"Answer with the option's letter from the given choices directly." to both.
Answer: ``{question_id: id, prompt, text, answer_id, model_id, metadata}``. max_new_tokens
defaults to 1024 (LLaVA hard-codes it).
"""
from __future__ import annotations

from typing import List

from llava_restore.eval.generate import (Adapter, QuestionFileError, Sample, check_question_file, cli_entry,
                                         file_image, json_list_items, require, run_cli, with_image_token)

SINGLE_PRED_SUFFIX = "Answer with the option's letter from the given choices directly."


class ScienceAdapter(Adapter):
    name = "science"
    description = "LLaVA-1.5 ScienceQA answers (model_vqa_science flags)"
    max_new_tokens = 1024

    def add_args(self, parser) -> None:
        parser.add_argument("--single-pred-prompt", action="store_true",
                            help="append LLaVA's answer-with-the-letter instruction (sqa.sh passes it)")

    def options(self, args) -> dict:
        return {"single_pred_prompt": args.single_pred_prompt}

    def load(self, question_file: str, image_folder: str, single_pred_prompt: bool = False, **options) -> List[Sample]:
        path = check_question_file(question_file)
        samples = []
        for i, where, rec in json_list_items(path, "a JSON list of ScienceQA records"):
            qid, conversations = require(rec, ("id", "conversations"), where)
            if not conversations or "value" not in conversations[0]:
                raise QuestionFileError(f"{where}: 'conversations' has no first turn with a 'value'")
            qs = conversations[0]["value"].replace("<image>", "").strip()
            prompt, load, ref = qs, None, None
            if "image" in rec:
                load, ref = file_image(image_folder, rec["image"])
                qs, prompt = with_image_token(qs), with_image_token(prompt)
            if single_pred_prompt:
                qs, prompt = f"{qs}\n{SINGLE_PRED_SUFFIX}", f"{prompt}\n{SINGLE_PRED_SUFFIX}"
            samples.append(Sample(head={"question_id": qid, "prompt": prompt}, question=qs, image=load,
                                  image_ref=ref, where=where))
        return samples


ADAPTER = ScienceAdapter()


def main(argv=None) -> dict:
    return run_cli(ADAPTER, argv)


if __name__ == "__main__":
    cli_entry(main)
