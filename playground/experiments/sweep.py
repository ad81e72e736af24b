"""Exploratory: train the playground model with trainer overrides and print GQA-/POPE-style
accuracy every ``eval_every`` stage-2 steps (not part of the package).

    python playground/experiments/sweep.py name=A eval_every=500 -- steps=3000 device=cuda decoder_init_std=0.09

Keys before ``--`` are the sweep's own (name, eval_every, eval_bs); keys after it are
``PlaygroundTrainConfig`` overrides. Prints one ``EVAL {json}`` line per evaluation.
"""
import json
import os
import sys
import time

import torch
from omegaconf import OmegaConf

from llava_restore.model.conversation import get_conv_template
from llava_restore.model.mm_utils import load_image, pad_sequences, process_images, tokenizer_image_token
from llava_restore.playground.train import PlaygroundTrainConfig, train

argv = sys.argv[1:]
cut = argv.index("--") if "--" in argv else len(argv)
own = OmegaConf.merge(OmegaConf.create(dict(name="x", eval_every=500, eval_bs=64)), OmegaConf.from_dotlist(argv[:cut]))
conf = OmegaConf.merge(OmegaConf.structured(PlaygroundTrainConfig), OmegaConf.from_dotlist(argv[cut + 1:]))
cfg = OmegaConf.to_object(conf)
cfg.out = os.path.join("runs/sweep", own.name, "ckpt")
cfg.tb_dir = os.path.join("runs/sweep", own.name, "tb")
D = os.path.join(cfg.data, "eval")


def prompt(text):
    c = get_conv_template("vicuna_v1")
    c.append_message(c.roles[0], "<image>\n" + text)
    c.append_message(c.roles[1], None)
    return c.get_prompt()


def eval_items():
    gt = json.load(open(f"{D}/gqa/data/testdev_balanced_questions.json"))
    items = {"gqa": [], "pope": []}
    for line in open(f"{D}/gqa/llava_gqa_testdev_balanced.jsonl"):
        q = json.loads(line)
        g = gt[q["question_id"]]
        items["gqa"].append((q["text"], f"{D}/gqa/data/images/{q['image']}", g["answer"], g["types"]["detailed"]))
    lab = {}
    for cat in ("adversarial", "popular", "random"):
        for line in open(f"{D}/pope/coco/coco_pope_{cat}.json"):
            q = json.loads(line)
            lab[(cat, q["question_id"])] = q["label"]
    for line in open(f"{D}/pope/llava_pope_test.jsonl"):
        q = json.loads(line)
        qid = q["question_id"] - {"adversarial": 0, "random": 10000000, "popular": 20000000}[q["category"]]
        items["pope"].append((q["text"], f"{D}/pope/val2014/{q['image']}", lab[(q["category"], qid)], q["category"]))
    return items


CACHE = {}


@torch.no_grad()
def evaluate(model, tok, proc):
    if not CACHE:
        for name, its in eval_items().items():
            px = process_images([load_image(p) for _, p, _, _ in its], proc, model.config.image_aspect_ratio)
            ids = [tokenizer_image_token(prompt(t), tok, return_tensors="pt") for t, *_ in its]
            CACHE[name] = (its, ids, px)
    was = model.training
    model.eval()
    res = {}
    dev = next(model.parameters()).device
    for name, (its, ids, px) in CACHE.items():
        hits, per, yes = 0, {}, 0
        for i in range(0, len(its), own.eval_bs):
            b_ids, mask = pad_sequences(ids[i:i + own.eval_bs], tok.pad_token_id, "left")
            out = model.generate(b_ids.to(dev), mask.to(dev), px[i:i + own.eval_bs].to(dev), max_new_tokens=4)
            for (_, _, gt, kind), o in zip(its[i:i + own.eval_bs], out):
                a = tok.decode(o, skip_special_tokens=True).strip().lower().rstrip(".")
                hit = a == gt.lower()
                hits += hit
                yes += a == "yes"
                per.setdefault(kind, []).append(hit)
        res[name] = round(100 * hits / len(its), 1)
        res[name + "_yes"] = round(100 * yes / len(its), 1)
        res[name + "_per"] = {k: round(100 * sum(v) / len(v)) for k, v in sorted(per.items())}
    model.train(was)
    if cfg.freeze_vision:
        model.get_vision_tower().eval()
    return res


T0 = time.time()


LOSS = []


def on_step(step, model, tok, proc, stats):
    nan = float("nan")
    LOSS.append((stats["loss"], nan if stats["ground"] is None else stats["ground"], nan if stats["aux"] is None else stats["aux"]))
    if step % 50 == 0:
        tail = LOSS[-50:]
        mean = lambda k: sum(x[k] for x in tail) / len(tail)
        print(f"STEP {step} loss {mean(0):.3f} ground {mean(1):.3f} aux {mean(2):.3f} visual tokens "
              f"{stats['visual_tokens']:.0f} t {time.time() - T0:.0f}s", flush=True)
    if step % own.eval_every == 0 or step == cfg.steps:
        te = time.time()
        r = evaluate(model, tok, proc)
        print("EVAL", json.dumps({"name": own.name, "step": step, "t": round(te - T0), "eval_s": round(time.time() - te), **r}),
              flush=True)


print("SWEEP", own.name, json.dumps(OmegaConf.to_container(conf)), flush=True)
s = train(cfg, on_step=on_step)
print("DONE", own.name, json.dumps({k: s[k] for k in ("train_seconds", "final_loss", "first_loss")}), flush=True)
