"""Exploratory: can the playground decoder (128-d, 4 layers, 4 heads) learn content-based recall
from text alone? (not part of the package)

Each sample lists 5 (colour, shape) pairs as words, then asks "Is there a <colour> <shape> in the
image? ... ASSISTANT:" (conjunctive recall); only the Yes/No token is supervised. Batch 32, AdamW.
Environment knobs: STEPS, LR (3e-3), INIT (std of the decoder's matrices, 0.02 as build_tiny),
HIDDEN/LAYERS/HEADS (128/4/4), SHORT=1 (no system prompt), COLOR=1 ("Is there a red object?"), COPY=1 (colour of the first
object), K (conjunctive questions per listed scene, each answered; 1), T (threads), DEV (cpu), MIMETIC=beta (q/k init so that W_q W_k^T ~ beta*I + noise). Usage, from the repository root with the playground data built:

    SHORT=1 COLOR=1 INIT=0.09 STEPS=800 python playground/experiments/recall_toy.py [embedding_std=1.0]
"""
import torch, random, sys, time
import os; torch.set_num_threads(int(os.environ.get("T", "1")))
from llava_restore.tools.make_tiny import TinySpec, build_tiny
from llava_restore.playground.data import corpus_texts
from llava_restore.model.mm_utils import pad_sequences
from llava_restore.playground import vocab as V
emb_std = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
mode = sys.argv[2] if len(sys.argv) > 2 else "text"
_h, _l, _n = (int(os.environ.get(k, d)) for k, d in (("HIDDEN", 128), ("LAYERS", 4), ("HEADS", 4)))
spec = TinySpec(image_size=96, patch_size=4, vision_hidden=64, vision_layers=3, vision_heads=4, hidden=_h, layers=_l,
                heads=_n, kv_heads=_n, intermediate=3 * _h, vocab_size=640)
tok, model, proc = build_tiny(spec, seed=0, tokenizer_texts=corpus_texts("playground/data"))
with torch.no_grad():
    model.model.embed_tokens.weight.normal_(0, emb_std)
    init = float(os.environ.get("INIT", "0.02"))
    for n, p in model.named_parameters():
        if p.dim() > 1 and "embed" not in n and "vision" not in n: p.normal_(0, init)
    beta = float(os.environ.get("MIMETIC", "0"))
    if beta:  # mimetic init (Trockman & Kolter, 2023): per head, W_q W_k^T ~ rank-d part of beta*I + 0.7*Z
        for layer in model.model.layers:
            a = layer.self_attn; d = a.head_dim
            for h in range(a.n_heads):
                M = 0.7 * torch.randn(_h, _h) / _h ** 0.5 + beta * torch.eye(_h)
                U, S, Vh = torch.linalg.svd(M)
                a.q_proj.weight[h * d:(h + 1) * d] = (U[:, :d] * S[:d].sqrt()).T
                a.k_proj.weight[h * d:(h + 1) * d] = (Vh[:d].T * S[:d].sqrt()).T
_W = {}
w = lambda s: _W[s] if s in _W else _W.setdefault(s, tok.encode(s, add_special_tokens=False))  # cached: sampling was most of a step
C, S = list(V.COLORS), list(V.SHAPES)
Y, N = w("Yes")[0], w("No")[0]
pre = w("USER:") if os.environ.get("SHORT") else w("A chat between a curious user and an artificial intelligence assistant. USER:")
post = w("in the image? Answer the question using a single word or phrase. ASSISTANT:")
rng = random.Random(0)
def sample():
    objs = rng.sample([(c, s) for c in C for s in S], 5)
    if rng.random() < 0.5: q = rng.choice(objs); a = Y
    else:
        q = rng.choice([(c, s) for c in C for s in S if (c, s) not in objs]); a = N
    if os.environ.get("COPY"):  # positional copy: learned in < 100 steps
        a = w(objs[0][0])[0]
        return torch.tensor(pre + sum((w(c) + w(s) for c, s in objs), []) + w("What color is the first object? ASSISTANT:") + [a]), a
    if os.environ.get("COLOR"):  # one-word existence: "Is there a red object?"
        cols = {c for c, _ in objs}
        q = rng.choice(C); a = Y if q in cols else N
        return torch.tensor(pre + sum((w(c) + w(s) for c, s in objs), []) + w("Is there a") + w(q) + w("object in the image? ASSISTANT:") + [a]), a
    ids = pre + sum((w(c) + w(s) for c, s in objs), []) + w("Is there a") + w(q[0]) + w(q[1]) + post
    return torch.tensor(ids + [a]), a
KQ = int(os.environ.get("K", "1"))  # K > 1: K conjunctive questions (each answered) per listed scene
if KQ > 1:
    SEP = w("</s> USER:")

    def sample():
        objs = rng.sample([(c, s) for c in C for s in S], 5)
        ids, ans = pre + sum((w(c) + w(s) for c, s in objs), []), []
        for _ in range(KQ):
            if rng.random() < 0.5:
                q, a = rng.choice(objs), Y
            else:
                q, a = rng.choice([(c, s) for c in C for s in S if (c, s) not in objs]), N
            ids = ids + w("Is there a") + w(q[0]) + w(q[1]) + post
            ans.append((len(ids), a))
            ids = ids + [a] + SEP
        return torch.tensor(ids), ans
DEV = os.environ.get("DEV", "cpu")
model.to(DEV).train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, betas=(0.9, 0.98))
t0, ACC = time.time(), []
for step in range(int(os.environ.get("STEPS", "1500"))):
    b = [sample() for _ in range(32)]
    ids, mask = pad_sequences([x[0] for x in b], 0, "right")
    lab = torch.full_like(ids, -100)
    for i, x in enumerate(b):
        for pos, a in (x[1] if KQ > 1 else [(len(x[0]) - 1, x[1])]):
            lab[i, pos] = a
    lr = float(os.environ.get("LR", "3e-3")) * min(1, (step + 1) / 50)
    for g in opt.param_groups: g["lr"] = lr
    ids, mask, lab = ids.to(DEV), mask.to(DEV), lab.to(DEV)
    out = model(ids, mask, None, labels=lab)
    opt.zero_grad(); out.loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
    sup = lab[:, 1:] != -100
    ACC.append((out.logits[:, :-1][sup].argmax(-1) == lab[:, 1:][sup]).float().mean().item())
    if (step + 1) % 100 == 0: print(step + 1, round(out.loss.item(), 3), "acc(last 100)", round(sum(ACC[-100:]) / 100, 3), f"{time.time()-t0:.0f}s", flush=True)
