"""Exploratory (not part of the package): run stage 1 (ViT patch pre-training) alone with
``PlaygroundTrainConfig`` overrides, then fit linear probes on the frozen features of the GQA-style
images' object patches: held-out accuracy of colour, shape and size per patch, and of shape from
each object's mean patch feature (what an attention head pooling over the object would see).

    T=2 python playground/experiments/vit_probe.py vision_pretrain_steps=150            # the default recipe
    python playground/experiments/vit_probe.py model.vision_layers=4 model.vision_hidden=96 vision_pretrain_steps=300
"""
import json, os, sys, time, torch
from omegaconf import OmegaConf
torch.set_num_threads(int(os.environ.get("T", "2")))
from llava_restore.playground.train import PlaygroundTrainConfig, pretrain_vision, patch_labels
from llava_restore.tools.make_tiny import build_tiny
from llava_restore.playground.data import corpus_texts
from llava_restore.model.mm_utils import load_image, process_images
cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PlaygroundTrainConfig), OmegaConf.from_cli(sys.argv[1:])))
tok, model, proc = build_tiny(cfg.model, seed=0, tokenizer_texts=corpus_texts(cfg.data))
class W:
    def add_scalar(self, *a): pass
t0 = time.time(); l = pretrain_vision(model, proc, cfg, W()); print("stage1", round(time.time() - t0), "s loss", round(l, 3), flush=True)
tower = model.get_vision_tower().eval()
D = cfg.data
sc = [json.loads(l) for l in open(f"{D}/scenes/gqa.jsonl")]
F, Y = [], []
with torch.no_grad():
    for i in range(0, len(sc), 50):
        px = process_images([load_image(os.path.join(D, "eval/gqa/data/images", os.path.basename(s["image"]))) for s in sc[i:i+50]], proc, "pad")
        F.append(tower(px).features); Y.append(torch.stack([patch_labels(s["scene"], 24, 4) for s in sc[i:i+50]]))
F = torch.cat(F).flatten(0, 1); Y = torch.cat(Y).transpose(1, 2).flatten(0, 1)
fg = (Y[:, 1] > 0) & (Y[:, 1] <= 6); F, Y = F[fg], Y[fg]
n = len(F); tr = torch.arange(n) < int(0.7 * n)
for k, name in ((0, "color"), (1, "shape"), (2, "size")):
    clf = torch.nn.Linear(F.shape[1], int(Y[:, k].max()) + 1); opt = torch.optim.Adam(clf.parameters(), 1e-2)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(clf(F[tr]), Y[tr, k]); opt.zero_grad(); loss.backward(); opt.step()
    print(name, round((clf(F[~tr]).argmax(-1) == Y[~tr, k]).float().mean().item(), 3), flush=True)
# object-level: mean of the object's patch features
from llava_restore.playground.grounding import patch_mask
FO, YO = [], []
with torch.no_grad():
    for i in range(0, len(sc), 50):
        px = process_images([load_image(os.path.join(D, "eval/gqa/data/images", os.path.basename(s["image"]))) for s in sc[i:i+50]], proc, "pad")
        f = tower(px).features
        for b, s in enumerate(sc[i:i+50]):
            for o in s["scene"]["objects"]:
                m = patch_mask([[o["x"], o["y"], o["w"], o["w"]]], 24, 4, "cpu")
                FO.append(f[b, m].mean(0)); YO.append(["square", "circle", "triangle", "diamond", "cross", "ring"].index(o["shape"]))
FO = torch.stack(FO); YO = torch.tensor(YO); n = len(FO); tr = torch.arange(n) < int(0.7 * n)
clf = torch.nn.Linear(FO.shape[1], 6); opt = torch.optim.Adam(clf.parameters(), 1e-2)
for _ in range(500):
    loss = torch.nn.functional.cross_entropy(clf(FO[tr]), YO[tr]); opt.zero_grad(); loss.backward(); opt.step()
print("object-pooled shape", round((clf(FO[~tr]).argmax(-1) == YO[~tr]).float().mean().item(), 3), "n", int((~tr).sum()))
