"""CLIP vision tower (transformers' CLIPVisionModel) and the multimodal projectors."""
from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, fields

import torch
from torch import nn
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from .checkpoint import load_vision_tower_folder
from .config import CheckpointError


@dataclass
class VisionOutput:
    features: torch.Tensor  # (B, N, Dv) features of mm_vision_select_layer
    cls_attn: torch.Tensor | None  # (B, N) CLS->patch attention of that layer, mean over heads
    cls_feature: torch.Tensor | None = None  # (B, Dv) the CLS token's output of that layer
    attn_keys: torch.Tensor | None = None  # (B, N, head_dim) that layer's patch keys, mean over heads


class VisionCache:
    """The vision tower's outputs for images seen before, keyed by their exact pixel bytes (LRU).

    Evaluation asks several questions about one image (POPE-style sets 18, GQA ~5), and the pruning
    methods here do not depend on the question, so the tower need not run again. Pass one instance
    to ``generate(..., vision_cache=...)`` for the length of a run; ``max_images`` bounds its memory.
    A hit returns the stored rows unchanged; misses of one call run through the tower together."""

    def __init__(self, max_images: int):
        if max_images < 1:
            raise ValueError(f"VisionCache needs max_images >= 1, got {max_images}")
        self.max_images = max_images
        self.hits = self.misses = 0
        self._rows: OrderedDict[str, VisionOutput] = OrderedDict()

    @staticmethod
    def _key(image: torch.Tensor, want_cls_attn: bool, want_keys: bool) -> str:
        digest = hashlib.sha1(image.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        return f"{digest}:{tuple(image.shape)}:{image.dtype}:{int(want_cls_attn)}{int(want_keys)}"

    def __call__(self, tower: "CLIPVisionTower", images: torch.Tensor, want_cls_attn: bool = False,
                 want_keys: bool = False) -> VisionOutput:
        """``tower(images, ...)`` (B, 3, H, W), answered from the cache where possible."""
        keys = [self._key(img, want_cls_attn, want_keys) for img in images]
        todo, queued = [], set()  # the first row of every image not cached yet
        for i, k in enumerate(keys):
            if k not in self._rows and k not in queued:
                todo.append(i)
                queued.add(k)
        if todo:
            out = tower(images[todo], want_cls_attn=want_cls_attn, want_keys=want_keys)
            for j, i in enumerate(todo):
                self._rows[keys[i]] = VisionOutput(**{f.name: None if getattr(out, f.name) is None
                                                      else getattr(out, f.name)[j:j + 1]
                                                      for f in fields(VisionOutput)})
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        rows = [self._rows[k] for k in keys]
        for k in keys:
            self._rows.move_to_end(k)
        while len(self._rows) > self.max_images:
            self._rows.popitem(last=False)
        return VisionOutput(**{f.name: None if getattr(rows[0], f.name) is None
                               else torch.cat([getattr(r, f.name) for r in rows])
                               for f in fields(VisionOutput)})


class CLIPVisionTower(nn.Module):
    """Runs the CLIP encoder up to ``select_layer`` and returns that layer's patch features.

    The CLS->patch attention of the same layer is computed on request from the layer's own
    q/k projections (one query row), so no full attention map is materialised; the same keys,
    averaged over heads, are VisionZip's similarity metric (``want_keys``).
    """

    def __init__(self, vision_model: CLIPVisionModel, select_layer: int = -2, select_feature: str = "patch"):
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature {select_feature!r} not in ['patch', 'cls_patch']")
        self.vision_tower = vision_model
        self.select_layer = select_layer
        self.select_feature = select_feature
        n_layers = vision_model.config.num_hidden_layers
        # hidden_states[k] is the output of encoder layer k-1 (k=0: embeddings)
        k = select_layer if select_layer >= 0 else n_layers + 1 + select_layer
        if not 1 <= k <= n_layers:
            raise ValueError(f"mm_vision_select_layer {select_layer} out of range for {n_layers} layers")
        self.last_layer = k - 1  # index of the encoder layer whose output is used

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_tower.config

    @property
    def num_patches(self) -> int:
        return (self.config.image_size // self.config.patch_size) ** 2

    @property
    def grid_hw(self) -> tuple[int, int]:
        side = self.config.image_size // self.config.patch_size
        return side, side

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @staticmethod
    def _layer_attention(layer, h: torch.Tensor, want_cls_attn: bool, want_keys: bool):
        """(B, 1+N, Dv) layer input -> (cls_attn (B, N) | None: the CLS query's attention to the
        patches, mean over heads; keys (B, N, d) | None: the patches' keys, mean over heads)."""
        attn = layer.self_attn
        x = layer.layer_norm1(h)
        B, L, _ = x.shape
        k = attn.k_proj(x).view(B, L, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, L, d)
        cls_attn = keys = None
        if want_cls_attn:
            q = attn.q_proj(x[:, :1]).view(B, 1, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, 1, d)
            probs = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * attn.scale, dim=-1)  # (B, H, 1, L)
            cls_attn = probs[:, :, 0, 1:].mean(dim=1)  # (B, N)
        if want_keys:
            keys = k[:, :, 1:].float().mean(dim=1)  # (B, N, d)
        return cls_attn, keys

    def forward(self, pixel_values: torch.Tensor, want_cls_attn: bool = False, want_keys: bool = False) -> VisionOutput:
        vm = self.vision_tower
        h = vm.embeddings(pixel_values.to(dtype=vm.embeddings.patch_embedding.weight.dtype))
        h = vm.pre_layrnorm(h)  # (B, 1+N, Dv)
        cls_attn = keys = None
        for i, layer in enumerate(vm.encoder.layers[: self.last_layer + 1]):
            if (want_cls_attn or want_keys) and i == self.last_layer:
                cls_attn, keys = self._layer_attention(layer, h, want_cls_attn, want_keys)
            h = layer(h, None)
        feats = h[:, 1:] if self.select_feature == "patch" else h
        return VisionOutput(features=feats, cls_attn=cls_attn, cls_feature=h[:, 0], attn_keys=keys)


def build_projector(projector_type: str, mm_hidden: int, hidden: int) -> nn.Module:
    """``linear`` or ``mlp{k}x_gelu`` (LLaVA-1.5 uses mlp2x_gelu); names match LLaVA's weights."""
    if projector_type == "linear":
        return nn.Linear(mm_hidden, hidden)
    m = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if not m:
        raise ValueError(f"mm_projector_type {projector_type!r} not supported; known: linear, mlp<k>x_gelu")
    layers: list[nn.Module] = [nn.Linear(mm_hidden, hidden)]
    for _ in range(int(m.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(hidden, hidden)]
    return nn.Sequential(*layers)


def _local_files_only(allow_download: bool) -> bool:
    return not allow_download


def load_vision_tower(name_or_path: str, *, base_dir: str | None = None, allow_download: bool = False,
                      torch_dtype=None) -> tuple[CLIPVisionModel, CLIPImageProcessorPil]:
    """Load a CLIP vision tower and its image processor by hub name or local folder.

    The processor is the PIL backend of CLIP's, the preprocessing LLaVA-1.5 was evaluated with.

    A relative path is resolved against ``base_dir`` (the checkpoint folder) first.  Without
    ``allow_download`` nothing is fetched from the network: a hub name that is not in the local
    cache fails with a message saying how to provide it.
    """
    candidates = [name_or_path]
    if base_dir and not os.path.isabs(name_or_path):
        candidates.insert(0, os.path.join(base_dir, name_or_path))
    for cand in candidates:
        if os.path.isdir(cand):
            if not os.path.isfile(os.path.join(cand, "config.json")):
                raise CheckpointError(f"vision tower folder {cand} has no config.json")
            if not os.path.isfile(os.path.join(cand, "preprocessor_config.json")):
                raise CheckpointError(f"vision tower folder {cand} has no preprocessor_config.json")
            model = load_vision_tower_folder(cand, torch_dtype)  # either key layout; strict
            proc = CLIPImageProcessorPil.from_pretrained(cand, local_files_only=True)
            return model, proc
    try:
        model = CLIPVisionModel.from_pretrained(name_or_path, dtype=torch_dtype, local_files_only=not allow_download)
        proc = CLIPImageProcessorPil.from_pretrained(name_or_path, local_files_only=not allow_download)
    except OSError as exc:
        hint = ("pass --vision-tower /path/to/local/clip folder, or allow the download explicitly with "
                "--allow-download" if not allow_download else "check the name and your network access")
        raise CheckpointError(f"vision tower {name_or_path!r} is not available locally ({exc.__class__.__name__}); {hint}") from exc
    return model, proc
