"""Exploratory probe: does the playground decoder learn to use the image? (not part of the package)

Stage-2-only experiments on cached features of the committed checkpoint's (frozen, stage-1
pre-trained) ViT, with quick GQA-/POPE-style greedy evaluation every ``eval_every`` steps.
Run from the repository root after ``python -m llava_restore.playground build``:

    T=2 python playground/experiments/grounding_probe.py steps=500 eval_every=250 \
        fg_steps=500 dilate=0 bg_keep=0 [split=1] [oracle=1] [lr=3e-3] name=C1

- ``fg_steps``: train on the ground-truth foreground patches only (+ ``bg_keep`` random background
  patches, ``dilate`` patches of margin), kept at their original RoPE positions; evaluation runs
  with all 576 tokens (EVAL) and, while in that phase, with foreground tokens only (EVALFG);
- ``oracle=1``: replace each kept visual token by the sum of the word embeddings of its patch's
  colour, shape and size (a perfectly "aligned" visual token), to separate the decoder's
  learning from the visual features;
- ``split=1``: one question per record instead of LLaVA's multi-turn records;
- ``dstep=N dmax=M`` (with ``split=1`` and ``fg_steps``): a distractor curriculum. A turn about
  particular objects keeps only their patches plus ``step // N`` other objects (while that is
  below M; then all foreground patches). Other turns keep the whole foreground.

``TOWER=<checkpoint>`` takes the ViT from another checkpoint (cache the features in a fresh
``PROBE_DIR``); the default is the committed checkpoint.

It swaps ``encode_images``/``reduce`` on this one model instance (no library class is patched).
"""
import json, math, os, sys, time, random
import torch, torch.nn.functional as F
from omegaconf import OmegaConf
torch.set_num_threads(int(os.environ.get("T", "2")))
from llava_restore.model.builder import load_pretrained_model
from llava_restore.model.mm_utils import load_image, process_images, tokenizer_image_token, pad_sequences
from llava_restore.model.conversation import get_conv_template
from llava_restore.tools.make_tiny import TinySpec, build_tiny
from llava_restore.train.data import tokenize_conversation
from llava_restore.playground.data import corpus_texts
D = "playground/data"
cfg = OmegaConf.merge(OmegaConf.create(dict(steps=300, bs=16, lr=2e-3, warmup=30, seed=0, eval_every=100, hidden=128, layers=4,
      heads=4, inter=384, proj_lr_mult=1.0, rescale=1, wd=0.0, init_std=0.02, emb_std=1.0, kinds="", maxrec=0, name="x", objtok=0, full_eval=1, split=0, oracle=0, fg_eval=1, fg_steps=0, bg_keep=32, dilate=1, dstep=0, dmax=3)),
      OmegaConf.from_cli(sys.argv[1:]))
print(OmegaConf.to_yaml(cfg))
torch.manual_seed(cfg.seed)
spec = TinySpec(image_size=96, patch_size=4, vision_hidden=64, vision_layers=3, vision_heads=4, hidden=cfg.hidden,
                layers=cfg.layers, heads=cfg.heads, kv_heads=cfg.heads, intermediate=cfg.inter, vocab_size=640)
tok, model, proc = build_tiny(spec, seed=cfg.seed, tokenizer_texts=corpus_texts(D))
with torch.no_grad():
    for n, p in model.named_parameters():
        if not n.startswith("model.vision_tower") and p.dim() > 1:
            p.normal_(0.0, cfg.init_std if "embed" not in n else cfg.emb_std)
# vision tower from the committed checkpoint
OUTD = os.environ.get("PROBE_DIR", "runs/grounding_probe")
os.makedirs(OUTD, exist_ok=True)
fc = os.path.join(OUTD, "feats.pt")  # cached ViT features (~300 MB, fp16)
if not os.path.exists(fc):
    from llava_restore.model.builder import load_pretrained_model as L
    out = L(os.environ.get("TOWER", "playground/cache/llava-playground"))
    refm = out[1] if isinstance(out, tuple) else out.model
    tower = refm.get_vision_tower().eval()
    paths = [json.loads(l)["image"] for l in open(f"{D}/scenes/train.jsonl")]
    paths += ["eval/gqa/data/images/" + f for f in sorted(os.listdir(f"{D}/eval/gqa/data/images"))]
    paths += ["eval/pope/val2014/" + f for f in sorted(os.listdir(f"{D}/eval/pope/val2014"))]
    feats = []
    with torch.no_grad():
        for i in range(0, len(paths), 64):
            px = process_images([load_image(os.path.join(D, p)) for p in paths[i:i+64]], proc, "pad")
            feats.append(tower(px).features.half())
    torch.save({"paths": paths, "feats": torch.cat(feats), "tower": tower.state_dict()}, fc)
C = torch.load(fc)
P2I = {p: i for i, p in enumerate(C["paths"])}
FE = C["feats"]
model.get_vision_tower().load_state_dict(C["tower"])
model.get_vision_tower().requires_grad_(False)
def enc(images, want_cls_attn=False):
    f = images.float()
    return f, model.model.mm_projector(f), None
model.encode_images = enc
from llava_restore.playground.train import patch_labels
from llava_restore.reduction.types import ReductionResult
scn = [json.loads(l) for l in open(f"{D}/scenes/train.jsonl")]
FG = torch.stack([(patch_labels(s["scene"], 24, 4) != 0).any(0) for s in scn])  # (n_train, 576)
def centre_mask(scene):  # one patch per object / text: the one under its centre
    m = torch.zeros(576, dtype=torch.bool)
    for o in scene["objects"] + scene["texts"]:
        cx, cy = o["x"] + o["w"] // 2, o["y"] + o.get("h", o["w"]) // 2
        m[min(cy // 4, 23) * 24 + min(cx // 4, 23)] = True
    return m
if cfg.objtok:
    FG = torch.stack([centre_mask(s["scene"]) for s in scn])
if cfg.dilate and not cfg.objtok:
    FG = torch.nn.functional.max_pool2d(FG.float().view(-1, 1, 24, 24), 2 * cfg.dilate + 1, 1, cfg.dilate).view(-1, 576) > 0
LBL = {}
for k, s_ in enumerate(scn): LBL[P2I[s_["image"]]] = patch_labels(s_["scene"], 24, 4)
from llava_restore.playground import vocab as V
WID = {}
def wid(w): return tok.encode(w, add_special_tokens=False)[0]
CW = torch.tensor([0] + [wid(c) for c in V.COLORS]); SW = torch.tensor([0] + [wid(c) for c in V.SHAPES] + [wid("text")]); ZW = torch.tensor([0, wid("small"), wid("large")])
CUR_FI = {"fi": None}
print("fg tokens per image", FG.float().sum(1).mean().item())
CUR = {"keep": None}
_orig_reduce = model.reduce
def red(images, rcfg):
    if CUR["keep"] is None:
        return _orig_reduce(images, rcfg)
    _, proj, _ = enc(images)
    if cfg.oracle:
        E = model.model.embed_tokens.weight
        lb = torch.stack([LBL[i] for i in CUR_FI["fi"]])  # (B,3,576)
        proj = E[CW[lb[:, 0]]] + E[SW[lb[:, 1]]] + E[ZW[lb[:, 2]]] * (lb[:, 2:3] > 0).transpose(1, 2).float()
    outs = []
    for i in range(images.shape[0]):
        idx = CUR["keep"][i]
        src = torch.full((576,), -1, dtype=torch.long); src[idx] = torch.arange(len(idx))
        outs.append(ReductionResult(proj[i:i+1, idx], src[None], torch.ones(1, len(idx)), idx[None].float()))
    return outs
model.reduce = red
class RC:
    position_mode = "retain"; size_term = False; distance_term = False; attn_backend = "sdpa"; method = "oracle"; distance_c = 2.0; layer0_uniform_size = False; distance_in_decode = False; distance_scope = "all"
    def resolve(self): return self
recs = json.load(open(f"{D}/train/llava_playground_train.json"))
recs = [r for r in recs if "image" in r]
if cfg.maxrec: recs = recs[:cfg.maxrec]
GB = json.load(open(f"{D}/train/llava_playground_train_grounding.json"))
SCN = {s_["image"]: s_["scene"] for s_ in scn}
from llava_restore.playground.grounding import patch_mask
if cfg.split:
    new = []
    for r in recs:
        cv = r["conversations"]
        for j in range(0, len(cv) - 1, 2):
            q = cv[j]["value"].replace("<image>\n", "")
            new.append({"id": r["id"] + f"_{j}", "image": r["image"], "conversations": [{"from": "human", "value": "<image>\n" + q}, cv[j + 1]],
                        "boxes": GB.get(r["id"], [[]] * 99)[j // 2]})
    recs = new
data = []
for r in recs:
    ids, lab = tokenize_conversation(r["conversations"], tok, "vicuna_v1", r["id"])
    data.append((ids, lab, P2I[r["image"]], r.get("boxes", []), r["image"]))
print(len(data), "records; mean len", sum(len(d[0]) for d in data) / len(data))
if cfg.rescale:
    with torch.no_grad():
        pr = model.model.mm_projector(FE[:16].float())
        fac = model.model.embed_tokens.weight.std().item() / pr.std().item()
        last = [m for m in model.model.mm_projector.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(fac); last.bias.mul_(fac)
        print("rescale", fac)
# eval sets
def conv_prompt(q):
    c = get_conv_template("vicuna_v1"); c.append_message(c.roles[0], "<image>\n" + q); c.append_message(c.roles[1], None)
    return c.get_prompt()
gqa_gt = json.load(open(f"{D}/eval/gqa/data/testdev_balanced_questions.json"))
EV = {"gqa": [], "pope": []}
for l in open(f"{D}/eval/gqa/llava_gqa_testdev_balanced.jsonl"):
    q = json.loads(l); EV["gqa"].append((conv_prompt(q["text"]), P2I["eval/gqa/data/images/" + q["image"]], gqa_gt[q["question_id"]]["answer"], gqa_gt[q["question_id"]]["types"]["semantic"]))
lab = {}
for cat in ("adversarial", "popular", "random"):
    for l in open(f"{D}/eval/pope/coco/coco_pope_{cat}.json"):
        q = json.loads(l); lab[(cat, q["image"], q["text"])] = q["label"]
for l in open(f"{D}/eval/pope/llava_pope_test.jsonl"):
    q = json.loads(l); t = q["text"].split("\n")[0]
    EV["pope"].append((conv_prompt(q["text"]), P2I["eval/pope/val2014/" + q["image"]], lab[(q["category"], q["image"], t)], q["category"]))
EFG = {}
for part, pre in (("gqa", "eval/gqa/data/images/"), ("pope", "eval/pope/val2014/")):
    for l in open(f"{D}/scenes/{part}.jsonl"):
        s_ = json.loads(l); k_ = P2I[pre + os.path.basename(s_["image"])]; LBL[k_] = patch_labels(s_["scene"], 24, 4); EFG[k_] = centre_mask(s_["scene"]) if cfg.objtok else (LBL[k_] != 0).any(0)
@torch.no_grad()
def evaluate(fgmode=False):
    model.eval(); res = {}
    for name, items in EV.items():
        ok = 0; per = {}
        for i in range(0, len(items), 50):
            chunk = items[i:i+50]
            ids, mask = pad_sequences([tokenizer_image_token(p, tok, return_tensors="pt") for p, *_ in chunk], tok.pad_token_id, "left")
            rc = None
            if fgmode:
                CUR["keep"] = [EFG[c[1]].nonzero(as_tuple=True)[0] for c in chunk]; rc = RC(); CUR_FI["fi"] = [c[1] for c in chunk]
            out = model.generate(ids, mask, FE[[c[1] for c in chunk]], max_new_tokens=4, reduction=rc)
            CUR["keep"] = None
            for (p, _, gt, k), o in zip(chunk, out):
                a = tok.decode(o, skip_special_tokens=True).strip().lower().rstrip(".")
                hit = a == gt.lower(); ok += hit; per.setdefault(k, []).append(hit)
        res[name] = round(100 * ok / len(items), 1)
        res[name + "_per"] = {k: round(100 * sum(v) / len(v), 1) for k, v in per.items()}
    model.train(); return res
params = [p for p in model.parameters() if p.requires_grad]
proj = [p for n, p in model.named_parameters() if p.requires_grad and "mm_projector" in n]
rest = [p for n, p in model.named_parameters() if p.requires_grad and "mm_projector" not in n]
opt = torch.optim.AdamW([{"params": rest, "m": 1.0}, {"params": proj, "m": cfg.proj_lr_mult}], lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.wd)
g = random.Random(cfg.seed)
order = []
model.train(); t0 = time.time(); ls = []
for step in range(cfg.steps):
    if len(order) < cfg.bs:
        order += g.sample(range(len(data)), len(data))
    b = [data[order.pop()] for _ in range(cfg.bs)]
    ids, mask = pad_sequences([x[0] for x in b], tok.pad_token_id, "right")
    labs, _ = pad_sequences([x[1] for x in b], -100, "right")
    lr = cfg.lr * min(1, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
    for gr in opt.param_groups: gr["lr"] = lr * gr["m"]
    rc = None; CUR["keep"] = None
    if step < cfg.fg_steps:
        keeps = []
        for x in b:
            fg = FG[x[2]]
            if cfg.dstep and x[3]:
                nd = step // cfg.dstep
                if nd < cfg.dmax:
                    objs = [[o["x"], o["y"], o["w"], o["w"]] for o in SCN[x[4]]["objects"]]
                    others = [o for o in objs if o not in x[3]]
                    random.Random(step * 7 + x[2]).shuffle(others)
                    fg = patch_mask(list(x[3]) + others[:nd], 24, 4, "cpu")
            bg = (~fg).nonzero(as_tuple=True)[0]
            extra = bg[torch.randperm(len(bg), generator=torch.Generator().manual_seed(step * 1000 + x[2]))[:cfg.bg_keep]]
            keeps.append(torch.cat([fg.nonzero(as_tuple=True)[0], extra]).sort().values)
        CUR["keep"] = keeps; rc = RC(); CUR_FI["fi"] = [x[2] for x in b]
    out = model(ids, mask, FE[[x[2] for x in b]], labels=labs, reduction=rc)
    CUR["keep"] = None
    opt.zero_grad(set_to_none=True); out.loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); ls.append(out.loss.item())
    if (step + 1) % 20 == 0:
        print(f"step {step+1} loss {sum(ls[-20:])/20:.3f} t {time.time()-t0:.0f}s", flush=True)
    if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
        te = time.time(); r = evaluate() if cfg.full_eval else {}; print("EVAL", step + 1, json.dumps(r), f"({time.time()-te:.0f}s)", flush=True)
        if cfg.fg_eval and step < cfg.fg_steps: print("EVALFG", step + 1, json.dumps(evaluate(True)), flush=True)
torch.save(model.state_dict(), os.path.join(OUTD, f"{cfg.name}.pt"))
