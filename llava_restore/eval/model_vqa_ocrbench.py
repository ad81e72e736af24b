"""``python -m llava_restore.eval.model_vqa_ocrbench``: OCRBench generation (not part of LLaVA's repo).

Question file: ``OCRBench.json``, a JSON list of ``{image_path, question, answers, type,
dataset_name, [id]}``; images at ``--image-folder/<image_path>``. The user turn is
``"<image>\\n" + question`` (the question as OCRBench gives it, no extra instruction), and the answer
is ``{question_id: id (else the item's 0-based position), prompt: question, text, answer_id,
model_id, metadata}``, which ``eval_ocrbench`` scores. max_new_tokens defaults to 128.
"""
from __future__ import annotations

from typing import List

from llava_restore.eval.generate import (Adapter, Sample, check_question_file, cli_entry,
                                         file_image, json_list_items, require, run_cli, with_image_token)


class OCRBenchAdapter(Adapter):
    name = "ocrbench"
    description = "OCRBench answers (LLaVA-style flags)"
    max_new_tokens = 128

    def load(self, question_file: str, image_folder: str, **options) -> List[Sample]:
        path = check_question_file(question_file)
        samples = []
        for i, where, item in json_list_items(path, "the OCRBench JSON list"):
            image_path, question = require(item, ("image_path", "question"), where)
            load, ref = file_image(image_folder, image_path)
            samples.append(Sample(head={"question_id": item.get("id", i), "prompt": question},
                                  question=with_image_token(question), image=load, image_ref=ref, where=where))
        return samples


ADAPTER = OCRBenchAdapter()


def main(argv=None) -> dict:
    return run_cli(ADAPTER, argv)


if __name__ == "__main__":
    cli_entry(main)
