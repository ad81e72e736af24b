"""The playground's controls: does the model answer from the image?

    python -m llava_restore.playground controls --model-path playground/cache/llava-playground [--out runs/controls]

1. **Text-only prior**: the accuracy of answering every question with the majority answer of its
   question type, computed on the evaluation set itself (an upper bound for a blind guesser that
   knows each type's answer distribution). GQA-style: per ``types.detailed``; POPE-style: per split,
   with the F1 that answer gets.
2. **Blank images**: the same questions, each image replaced by a uniform grey one of the same size
   and file name, scored by the project's scorers (``llava_restore.eval.run`` with ``--image-folder``).

Writes ``<out>/controls.json`` (with the arguments) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List

from PIL import Image

from llava_restore.eval import run as eval_run
from llava_restore.eval.generate import BundleCache
from llava_restore.eval.eval_pope import binary_metrics
from llava_restore.playground.benchmarks import pope

BLANK_RGB = (128, 128, 128)  # the uniform image's colour (mid grey)


def _read_jsonl(path: Path) -> List[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {n}: not JSON ({err.msg})") from None
    return rows


def gqa_prior(data_root: Path) -> dict:
    """Majority answer per question type (``types.detailed``) -> accuracy %, per type and overall."""
    gt = json.loads((data_root / "gqa/data/testdev_balanced_questions.json").read_text())
    rows = _read_jsonl(data_root / "gqa/llava_gqa_testdev_balanced.jsonl")
    by_type: Dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        q = gt[r["question_id"]]
        by_type[q["types"]["detailed"]][q["answer"]] += 1
    hits = {t: c.most_common(1)[0][1] for t, c in by_type.items()}
    n = {t: sum(c.values()) for t, c in by_type.items()}
    return {"accuracy": round(100 * sum(hits.values()) / sum(n.values()), 2),
            "per_type": {t: {"majority": by_type[t].most_common(1)[0][0], "accuracy": round(100 * hits[t] / n[t], 2),
                             "n": n[t]} for t in sorted(by_type)}}


def pope_prior(data_root: Path) -> dict:
    """Per split, the majority label answered to every question: accuracy and F1 (%)."""
    out = {}
    for split in pope.CATEGORIES:
        labels = [r["label"] for r in _read_jsonl(data_root / f"pope/coco/coco_pope_{split}.json")]
        major = Counter(labels).most_common(1)[0][0]
        as01 = lambda v: int(v == "yes")
        m = binary_metrics([as01(major)] * len(labels), [as01(v) for v in labels])
        out[split] = {"majority": major, "accuracy": m["acc"], "f1": m["f1"] or 0.0}
    out["mean_accuracy"] = round(sum(out[s]["accuracy"] for s in pope.CATEGORIES) / len(pope.CATEGORIES), 2)
    out["mean_f1"] = round(sum(out[s]["f1"] for s in pope.CATEGORIES) / len(pope.CATEGORIES), 2)
    return out


def blank_folder(src: Path, dst: Path) -> Path:
    """``dst`` holds a uniform image for every image file of ``src`` (same names and sizes)."""
    if not src.is_dir():
        raise FileNotFoundError(f"image folder {src} does not exist; build the data first "
                                "(python -m llava_restore.playground build)")
    dst.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(src)):
        target = dst / name
        if name.lower().endswith(".png") and not target.exists():
            with Image.open(src / name) as im:
                Image.new("RGB", im.size, BLANK_RGB).save(target)
    return dst


BLANK_SETS = {  # benchmark -> its image folder under the eval data root
    "gqa": Path("gqa/data/images"),
    "pope": Path("pope/val2014"),
}


def blank_run(bench: str, data_root: Path, out: Path, model_path: str, batch_size: int,
              bundles: BundleCache | None = None) -> dict:
    """eval.run on the blank copies; the vision cache runs the tower once per distinct blank image."""
    folder = blank_folder(data_root / BLANK_SETS[bench], out / "blank_images" / bench)
    res = eval_run.main(["--benchmark", bench, "--model-path", model_path, "--data-root", str(data_root),
                         "--image-folder", str(folder), "--output-root", str(out / "eval"),
                         "--batch-size", str(batch_size), "--temperature", "0", "--vision-cache", "64"],
                        bundles=bundles)
    return res["metrics"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default="playground/cache/llava-playground")
    ap.add_argument("--data-root", default="playground/data/eval")
    ap.add_argument("--out", default="runs/controls")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--no-blank", action="store_true", help="only the text-only prior (no model run)")
    args = ap.parse_args(argv)
    data_root, out = Path(args.data_root), Path(args.out)
    res = {"args": vars(args), "prior": {"gqa": gqa_prior(data_root), "pope": pope_prior(data_root)}}
    if not args.no_blank:
        bundles = BundleCache()  # one model load for both sets
        res["blank"] = {b: blank_run(b, data_root, out, args.model_path, args.batch_size, bundles) for b in BLANK_SETS}
    out.mkdir(parents=True, exist_ok=True)
    (out / "controls.json").write_text(json.dumps(res, indent=2) + "\n")
    print(summary(res))
    return res


def summary(res: dict) -> str:
    p = res["prior"]
    lines = ["| control | GQA-style accuracy | POPE-style mean F1 | POPE-style mean accuracy |", "|---|---|---|---|",
             f"| text-only prior (majority answer per type) | {p['gqa']['accuracy']:.2f} | {p['pope']['mean_f1']:.2f} | "
             f"{p['pope']['mean_accuracy']:.2f} |"]
    if "blank" in res:
        b = res["blank"]
        lines.append(f"| blank (uniform grey) images | {b['gqa']['accuracy']:.2f} | {_mean(b['pope'], 'f1')} | "
                     f"{_mean(b['pope'], 'acc')} |")
    return "\n".join(lines)


def _mean(pope_res: dict, key: str) -> str:
    """The mean over POPE's splits, or why it is undefined (F1 with no "yes" answer)."""
    vals = [pope_res["categories"][c][key] for c in pope.CATEGORIES]
    if None in vals:
        return "undefined (no 'yes' answers)"
    return f"{sum(vals) / len(vals):.2f}"


if __name__ == "__main__":
    main()
