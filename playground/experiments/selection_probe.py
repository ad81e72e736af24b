"""Exploratory: how fast does the from-scratch decoder learn to *select* an object among the 576
visual tokens? (not part of the package)

Stage-2-only training on cached features of a stage-1 ViT (``runs/gp2/feats.pt``, written by
``PROBE_DIR=runs/gp2 TOWER=<ckpt> python playground/experiments/grounding_probe.py steps=0``), all
576 tokens, one synthetic question kind at a time, from the training scenes:

- ``Q=bg``: "What color is the background?" -- every token carries the answer (positive control:
  if this is not learned, the visual path is broken);
- ``Q=select``: "What color is the <shape>?" / "What shape is the <colour> object?" about an object
  whose shape (colour) is unique in the image -- the answer needs that object's tokens.

``GROUND=w`` adds the trainer's attention supervision (head 0 of layers ``GLAYERS``, default
1,2,3, from the question's object word to the answer position; full tokens only).
``ORACLE=1`` replaces each visual token by the word embeddings of its patch's colour, shape and
size (a perfectly aligned token; the ViT is not used).
``PREALIGN=N`` first trains the projector alone for N steps (batch 32) toward the oracle tokens.
``ALIGN=w`` adds w * MSE(projected ViT tokens, oracle tokens) / mean(oracle^2) (oracle detached).
``AUX=1`` also trains the question's object word position to predict the answer (the label of
the next position, a question token otherwise unsupervised).
``NOSUF=1`` drops LLaVA's short-answer line; ``CLIP`` (1.0; 0 = off) and ``BETA2`` (0.98) set the optimiser.
``FG=1`` keeps only the object/text patches (at their original RoPE positions); ``FG=2`` only the
patch under each object's centre; ``FG_STEPS=N`` switches to all 576 tokens after N steps.
- ``Q=exist``: "Is there a <colour> <shape> in the image?", half "yes" (an object of the image), half "no"
  (preferring a colour and a shape that both occur, but not together: POPE's adversarial case);
  ``AUX`` puts the aid on the shape word.
- ``Q=bare``: the same, as ``<image>\n<shape or colour word>`` -> answer, without the chat template
  (the word that names the object is the query position itself).

``DSTEP=N`` (with ``FG=1``): a distractor curriculum -- keep only the asked object's patches
plus ``step // N`` other objects of its image (texts dropped until every object is in).
``BGFRAC=f`` (with ``FG=1``): also keep a random fraction f of the background patches.
``BAGORACLE=1`` (with ``ORACLE=1``) adds to every visual token the image's bag of colour-shape pairs (a sum of
fixed random pair vectors): what an image-level (caption-like) objective would put into each patch.
``FEATS=none`` (with ``ORACLE=1``) needs no cached features. ``DEV=cuda`` runs on a GPU.

``K`` turns per conversation (each answer supervised), batch ``BS``, AdamW ``LR``, decoder init
``INIT``, ``LAYERS``/``HEADS``, ``T`` threads. Prints the running loss and the first-answer-token
accuracy over the last 25 steps.

    T=2 Q=select K=1 STEPS=200 python playground/experiments/selection_probe.py
"""
import json, os, random, time
import torch
from llava_restore.tools.make_tiny import TinySpec, build_tiny
from llava_restore.playground.data import corpus_texts
from llava_restore.model.mm_utils import pad_sequences, tokenizer_image_token
from llava_restore.playground.grounding import answer_queries
from llava_restore.train.data import tokenize_conversation

env = lambda k, d: type(d)(os.environ.get(k, d))
torch.set_num_threads(env("T", 2))
Q, K, BS, LR, STEPS = env("Q", "select"), env("K", 1), env("BS", 16), env("LR", 2e-3), env("STEPS", 200)
D = "playground/data"
DEV = torch.device(env("DEV", "cpu"))
scenes = [json.loads(l) for l in open(f"{D}/scenes/train.jsonl")]
if os.environ.get("FEATS") == "none":  # oracle tokens only: no ViT features needed
    assert env("ORACLE", 0), "FEATS=none needs ORACLE=1"
    C = None
    FE, paths = torch.zeros(len(scenes), 1, 64, dtype=torch.float16), [s["image"] for s in scenes]
else:
    C = torch.load(os.environ.get("FEATS", "runs/gp2/feats.pt"))
    FE, paths = C["feats"], C["paths"]  # (N_img, 576, Dv) fp16; image paths (train first)
SC = {s["image"]: s["scene"] for s in scenes}
n_train = len(scenes)
spec = TinySpec(image_size=96, patch_size=4, vision_hidden=64, vision_layers=3, vision_heads=4, hidden=128,
                layers=env("LAYERS", 4), heads=env("HEADS", 4), kv_heads=env("HEADS", 4), intermediate=384, vocab_size=640)
tok, model, proc = build_tiny(spec, seed=0, tokenizer_texts=corpus_texts(D), init_std=env("INIT", 0.09))
if C is not None:
    model.get_vision_tower().load_state_dict(C["tower"])
model.to(DEV)
GRID, PATCH = model.get_vision_tower().grid_hw[0], spec.patch_size  # 24 x 24 patches of 4 px
model.get_vision_tower().requires_grad_(False)
# this instance only: the cached features stand in for the (frozen) tower's output
model.encode_images = lambda images, want_cls_attn=False: (images.float(), model.model.mm_projector(images.float()), None)
FE = FE if C is None else FE.to(DEV)
with torch.no_grad():  # the trainer's projector rescale: visual tokens at the text embeddings' scale
    if C is not None:
        fac = model.model.embed_tokens.weight.std().item() / model.model.mm_projector(FE[:16].float()).std().item()
        last = [m for m in model.model.mm_projector.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(fac)
        last.bias.mul_(fac)
AUX = env("AUX", 0)  # 1: the object word's position is also trained to predict the answer (see sample)
ALIGN = env("ALIGN", 0.0)  # > 0: MSE of the ViT tokens to the oracle tokens (target detached), added to the loss
ORACLE = env("ORACLE", 0)  # 1: each object patch's token = word embeddings of its colour + shape (+ size); background 0
if ORACLE or ALIGN or env("PREALIGN", 0):
    from llava_restore.playground import vocab as V
    from llava_restore.playground.train import patch_labels as _pl
    _w = lambda s: tok.encode(s, add_special_tokens=False)[0]
    _CW = torch.tensor([0] + [_w(c) for c in V.COLORS], device=DEV)
    _SW = torch.tensor([0] + [_w(c) for c in V.SHAPES] + [_w("text")], device=DEV)
    _ZW = torch.tensor([0, _w("small"), _w("large")], device=DEV)
    ORC = {}

    def _oracle_tokens(lb):  # (B, 3, N) patch labels -> (B, N, D)
        E = model.model.embed_tokens.weight
        return sum(E[W[lb[:, k]]] * (lb[:, k] > 0).unsqueeze(-1).float() for k, W in enumerate((_CW, _SW, _ZW)))

    BAGORACLE = env("BAGORACLE", 0)  # 1: every oracle token also carries the image's colour-shape bag
    if BAGORACLE:  # (sum of fixed random pair vectors at the word embeddings' scale)
        from llava_restore.playground.train import pair_bag as _pair_bag
        _PAIRV = torch.randn(len(V.COLORS) * len(V.SHAPES), model.model.embed_tokens.weight.shape[1],
                             generator=torch.Generator().manual_seed(5)).to(DEV) * model.model.embed_tokens.weight.std().item()

    def _oracle(images, want_cls_attn=False):
        tokens = _oracle_tokens(ORC["lab"])
        if BAGORACLE:
            tokens = tokens + (ORC["bag"] @ _PAIRV)[:, None, :]
        return images.float(), tokens, None
    if ORACLE:
        if C is None:  # FE is a placeholder: stand in zeros of the grid's length
            FE = torch.zeros(len(scenes), 1, 1, dtype=torch.float16)
            _feat = lambda idx: torch.zeros(len(idx), GRID * GRID, 64, device=DEV)
        model.encode_images = _oracle
FG, FG_STEPS = env("FG", 0), env("FG_STEPS", 10 ** 9)  # FG=2: one token per object; FG_STEPS: then all 576 tokens; 1: keep only the object/text patches (original RoPE positions), as a cheaper, less diluted regime
if FG:
    from llava_restore.playground.train import patch_labels
    KEEP = {}  # per step: the kept patch indices per image (model(..., visual_keep=...))
GROUND = env("GROUND", 0.0)  # > 0: the trainer's attention supervision, from the question's object word on
if GROUND:
    from llava_restore.playground.grounding import AttnInputs, grounding_loss, query_spans, spliced_ids
    from llava_restore.playground.train import _mention_ids
    CAP = AttnInputs(model, [int(x) for x in os.environ.get("GLAYERS", "1,2,3").split(",")])
    MENTION = _mention_ids(tok)
SUF = "" if env("NOSUF", 0) else "\nAnswer the question using a single word or phrase."
CLIP, BETA2 = env("CLIP", 1.0), env("BETA2", 0.98)
DSTEP = env("DSTEP", 0)
BGFRAC = env("BGFRAC", 0.0)  # with FG=1: also keep this fraction of the background patches (random per sample)


def keep_fg_bg(sc, frac, rng):  # the object/text patches + a random fraction of the background ones, sorted
    fg = (patch_labels(sc, GRID, PATCH) != 0).any(0)
    bg = (~fg).nonzero(as_tuple=True)[0].tolist()
    extra = rng.sample(bg, int(round(frac * len(bg))))
    return torch.tensor(sorted(fg.nonzero(as_tuple=True)[0].tolist() + extra))
_feat = globals().get("_feat") or (lambda idx: FE[idx])


def kept_patches(sc, box, n_other, rng):  # the asked object's patches + n_other other objects' (distractor curriculum)
    objs = list(sc["objects"])
    rng.shuffle(objs)
    asked = [o for o in objs if [o["x"], o["y"], o["w"], o["w"]] == box]
    others = [o for o in objs if o not in asked][:n_other]
    texts = sc["texts"] if len(others) + len(asked) >= len(objs) else []
    return (patch_labels({"objects": asked + others, "texts": texts}, GRID, PATCH) != 0).any(0).nonzero(as_tuple=True)[0]


from llava_restore.playground import vocab as _VOCAB


def exist_questions(sc, rng):  # "Is there a <colour> <shape> in the image?", half yes, half no
    objs = sc["objects"]
    o = rng.choice(objs)
    if rng.random() < 0.5:
        return [(f"Is there a {o['color']} {o['shape']} in the image?", "yes", [[o["x"], o["y"], o["w"], o["w"]]])]
    pairs = {(p["color"], p["shape"]) for p in objs}
    colours, shapes = sorted({p["color"] for p in objs}), sorted({p["shape"] for p in objs})
    hard = [(c, s) for c in colours for s in shapes if (c, s) not in pairs]  # both words occur, not together
    c, s = rng.choice(hard) if hard else (o["color"], rng.choice([x for x in _VOCAB.SHAPES if x != o["shape"]]))
    return [(f"Is there a {c} {s} in the image?", "no", [])]


def questions(sc, rng):  # [(question, answer, [box])]
    if Q == "bg":
        return [("What color is the background?", sc["background"], [])]
    if Q == "exist":
        return exist_questions(sc, rng)
    # Q == "select" or "bare" (same questions; "bare" keeps only the object word, see sample)
    objs, out = sc["objects"], []
    for o in objs:
        if sum(p["shape"] == o["shape"] for p in objs) == 1:
            out.append((f"What color is the {o['shape']}?", o["color"], [[o["x"], o["y"], o["w"], o["w"]]]))
        if sum(p["color"] == o["color"] for p in objs) == 1:
            out.append((f"What shape is the {o['color']} object?", o["shape"], [[o["x"], o["y"], o["w"], o["w"]]]))
    rng.shuffle(out)
    return out or [("What color is the background?", sc["background"], [])]


def sample(i, rng):
    qa = questions(SC[paths[i]], rng)
    qa = [qa[j % len(qa)] for j in range(K)]
    if Q == "bare":  # no template: "<image>\n<object word>" -> answer; only the answer token is supervised
        q, a, box = qa[0]
        ids = tokenizer_image_token("<image>\n" + q.split()[-1 if "color" in q else -2].rstrip("?"), tok, return_tensors="pt")
        aid = tok.encode(a.capitalize(), add_special_tokens=False)[0]
        return torch.cat([ids, torch.tensor([aid])]), torch.cat([torch.full_like(ids, -100), torch.tensor([aid])]), [box]
    turns = []
    for j, (q, a, _) in enumerate(qa):
        turns += [{"from": "human", "value": ("<image>\n" if j == 0 else "") + q + SUF}, {"from": "gpt", "value": a.capitalize()}]
    ids, lab = tokenize_conversation(turns, tok, "vicuna_v1", paths[i])
    if AUX:  # the object word's position also predicts the answer (an otherwise unsupervised position)
        lab = lab.clone()
        starts = [p + 1 for p in answer_queries(lab[None])[0]]
        for (q, a, _), st in zip(qa, starts):
            word = q.split()[4] if q.startswith("Is there") else q.split()[-1 if "color" in q else -2].rstrip("?")
            # the last prompt token containing the word (the playground BPE fuses e.g. "cross?\nAnswer")
            m = max(t for t in range(st) if ids[t] >= 0 and word in tok.convert_ids_to_tokens(int(ids[t])))
            lab[m + 1] = lab[st]
    return ids, lab, [box for _, _, box in qa]


PREALIGN = env("PREALIGN", 0)  # N > 0: first N steps train the projector alone toward the oracle tokens (MSE)
if PREALIGN:
    popt = torch.optim.AdamW(model.model.mm_projector.parameters(), lr=3e-3)
    prng = random.Random(1)
    for pstep in range(PREALIGN):
        pidx = [prng.randrange(n_train) for _ in range(32)]
        tgt = _oracle_tokens(torch.stack([_pl(SC[paths[i]], GRID, PATCH) for i in pidx])).detach()
        pl = ((model.model.mm_projector(FE[pidx].float()) - tgt) ** 2).mean() / tgt.pow(2).mean()
        popt.zero_grad()
        pl.backward()
        popt.step()
        if (pstep + 1) % 100 == 0:
            print(f"prealign {pstep + 1} relative mse {pl.item():.3f}", flush=True)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, betas=(0.9, BETA2))
rng, t0, hits, GL = random.Random(0), time.time(), [], []
model.train()
for step in range(STEPS):
    idx = [rng.randrange(n_train) for _ in range(BS)]
    b = [sample(i, rng) for i in idx]
    ids, mask = pad_sequences([x[0] for x in b], tok.pad_token_id, "right")
    lab, _ = pad_sequences([x[1] for x in b], -100, "right")
    red = None
    if ORACLE or ALIGN:
        ORC["lab"] = torch.stack([_pl(SC[paths[i]], GRID, PATCH) for i in idx]).to(DEV)
        if ORACLE and BAGORACLE:
            ORC["bag"] = torch.stack([_pair_bag(SC[paths[i]]) for i in idx]).to(DEV)
    if FG and step < FG_STEPS:
        if FG == 2:  # one token per object: the patch under its centre
            KEEP["idx"] = [torch.tensor(sorted({min((o["y"] + o["w"] // 2) // PATCH, GRID - 1) * GRID + min((o["x"] + o["w"] // 2) // PATCH, GRID - 1)
                                                for o in SC[paths[i]]["objects"]})) for i in idx]
        elif DSTEP and Q != "bg":
            KEEP["idx"] = [kept_patches(SC[paths[i]], x[2][0][0], step // DSTEP, rng) if x[2] and x[2][0] else
                           (patch_labels(SC[paths[i]], GRID, PATCH) != 0).any(0).nonzero(as_tuple=True)[0]
                           for i, x in zip(idx, b)]
        else:
            KEEP["idx"] = [keep_fg_bg(SC[paths[i]], BGFRAC, rng) for i in idx]
        red = KEEP["idx"]
    ids, mask, lab = ids.to(DEV), mask.to(DEV), lab.to(DEV)
    out = model(ids, mask, _feat(idx), labels=lab, visual_keep=red)
    lg, tg = out.logits[:, :-1], out.prepared.labels[:, 1:]  # spliced positions (576 visual tokens inside)
    # the positions predicting each answer's first token; with AUX only the last one per row (K=1) is a real answer
    rows = [(b_, q) for b_, qs in enumerate(answer_queries(out.prepared.labels)) for q in (qs[-1:] if AUX else qs)]
    bi, qi = torch.tensor(rows, device=DEV).T
    hits.append((lg[bi, qi].argmax(-1) == tg[bi, qi]).float().mean().item())
    for g in opt.param_groups:
        g["lr"] = LR * min(1.0, (step + 1) / 30)
    loss = out.loss
    if ALIGN:
        tgt = _oracle_tokens(ORC["lab"]).detach()  # (B, 576, D)
        proj_tok = model.model.mm_projector(_feat(idx).float())
        loss = loss + ALIGN * ((proj_tok - tgt) ** 2).mean() / tgt.pow(2).mean().clamp_min(1e-8)
    if GROUND:
        spans = query_spans(spliced_ids(ids, mask, out.prepared), out.prepared.labels, MENTION, True)
        g = grounding_loss(CAP, out.prepared, [x[2] for x in b], GRID, PATCH, spans=spans)
        CAP.clear()
        if g is not None:
            loss = loss + GROUND * g
            GL.append(g.item())
    opt.zero_grad()
    loss.backward()
    if CLIP > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    if (step + 1) % 25 == 0:
        print(f"step {step + 1} loss {out.loss.item():.3f} acc(last 25 steps) {sum(hits[-25:]) / 25:.3f}"
              + (f" ground {sum(GL[-25:]) / max(1, len(GL[-25:])):.2f}" if GL else "") + f" {time.time() - t0:.0f}s", flush=True)
