"""The nine LLaVA-1.5 benchmarks as ``llava_restore.eval.run`` drives them: which generation adapter,
which files under the data root (LLaVA's ``./playground/data/eval`` layout, which the playground
builder reproduces), LLaVA's generation options, and how the scorer is called.

Paths are relative to ``<data-root>/<folder>``. A scorer file whose name starts with "?" is
optional: it is passed only when it exists (e.g. VQAv2's local annotation).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

from llava_restore.eval.registry import get_scorer

ADAPTER_MODULES = {
    "loader": "llava_restore.eval.model_vqa_loader",
    "science": "llava_restore.eval.model_vqa_science",
    "mmbench": "llava_restore.eval.model_vqa_mmbench",
    "ocrbench": "llava_restore.eval.model_vqa_ocrbench",
}


def get_adapter(name: str):
    if name not in ADAPTER_MODULES:
        raise ValueError(f"unknown generation adapter {name!r}; known: {sorted(ADAPTER_MODULES)}")
    return importlib.import_module(ADAPTER_MODULES[name]).ADAPTER


@dataclass(frozen=True)
class Benchmark:
    name: str
    adapter: str  # key of ADAPTER_MODULES
    folder: str  # under the data root
    question_file: str
    image_folder: str
    files: Dict[str, str]  # scorer inputs ("?name": optional)
    score_kwargs: Callable[[Dict[str, Optional[Path]], Path, Path], dict]  # (files, question file, run dir)
    main_metric: str
    adapter_options: Dict[str, object] = field(default_factory=dict)

    def score(self, result_file: Path, files: Dict[str, Optional[Path]], question_file: Path, run_dir: Path,
              n_skipped: int) -> dict:
        kwargs = self.score_kwargs(files, question_file, run_dir)
        return get_scorer(self.name)(result_file, n_skipped=n_skipped, **kwargs)


BENCHMARKS: Dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("gqa", "loader", "gqa", "llava_gqa_testdev_balanced.jsonl", "data/images",
           {"questions": "?data/testdev_balanced_questions.json"},
           lambda f, q, d: {"questions_file": f["questions"],
                            "predictions_file": d / "testdev_balanced_predictions.json"}, "accuracy"),
    Benchmark("mmbench", "mmbench", "mmbench", "mmbench_dev_20230712.tsv", "", {},
           lambda f, q, d: {"annotation_file": q, "upload_file": d / "upload.xlsx"}, "circular_accuracy",
           {"single_pred_prompt": True, "lang": "en"}),
    Benchmark("mme", "loader", "MME", "llava_mme.jsonl", "MME_Benchmark_release_version",
           {"gt_dir": "MME_Benchmark_release_version"},
           lambda f, q, d: {"gt_dir": f["gt_dir"], "question_file": q, "out_dir": d / "mme_results"}, "perception"),
    Benchmark("ocrbench", "ocrbench", "ocrbench", "OCRBench/OCRBench.json", "OCRBench_Images", {},
           lambda f, q, d: {"question_file": q}, "final_score"),
    Benchmark("pope", "loader", "pope", "llava_pope_test.jsonl", "val2014", {"annotation_dir": "coco"},
           lambda f, q, d: {"question_file": q, "annotation_dir": f["annotation_dir"]}, "mean_f1"),
    Benchmark("sqa", "science", "scienceqa", "llava_test_CQM-A.json", "images/test", {"base_dir": "."},
           lambda f, q, d: {"base_dir": f["base_dir"], "output_file": d / "sqa_output.json",
                            "output_result": d / "sqa_result.json"}, "img_accuracy",
           {"single_pred_prompt": True}),
    Benchmark("seed", "loader", "seed_bench", "llava-seed-bench.jsonl", ".", {"annotation": "?SEED-Bench.json"},
           lambda f, q, d: {"annotation_file": f["annotation"], "upload_file": d / "upload.jsonl"}, "image_accuracy"),
    Benchmark("textvqa", "loader", "textvqa", "llava_textvqa_val_v051_ocr.jsonl", "train_images",
           {"annotation": "TextVQA_0.5.1_val.json"}, lambda f, q, d: {"annotation_file": f["annotation"]}, "accuracy"),
    Benchmark("vqav2", "loader", "vqav2", "llava_vqav2_mscoco_test-dev2015.jsonl", "test2015",
           {"test_questions": "?llava_vqav2_mscoco_test2015.jsonl",
            "annotation": "?v2_mscoco_test-dev2015_annotations.json"},
           lambda f, q, d: {"question_file": f["test_questions"] or q, "output_file": d / "submission.json",
                            "annotation_file": f["annotation"]}, "accuracy"),
]}


def known_benchmarks() -> list:
    return sorted(BENCHMARKS)


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(known_benchmarks())}")
    return BENCHMARKS[name]


def resolve_files(bench: Benchmark, data_root: Path, overrides: Dict[str, str]) -> Dict[str, Optional[Path]]:
    """Scorer input paths: ``overrides`` (KEY=PATH from --data) else ``<data-root>/<folder>/<file>``;
    optional files that do not exist become None. A typo in a key fails listing the keys."""
    bad = sorted(set(overrides) - set(bench.files))
    if bad:
        raise ValueError(f"--data key(s) {bad} unknown for {bench.name}; known: {sorted(bench.files)}")
    out: Dict[str, Optional[Path]] = {}
    for name, rel in bench.files.items():
        if name in overrides:
            out[name] = Path(overrides[name])
            continue
        path = data_root / bench.folder / rel.lstrip("?")
        out[name] = None if rel.startswith("?") and not path.exists() else path
    return out
