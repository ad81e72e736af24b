"""VisionCache: the vision tower runs once per distinct image, and the reduced tokens are unchanged."""
from __future__ import annotations

import json

import pytest
import torch

from llava_restore.model.vision import VisionCache
from llava_restore.reduction.config import ReductionConfig

METHODS = ["divprune", "vispruner", "holov", "visionzip", "random"]


@pytest.fixture(scope="module")
def model(tiny_loaded):
    return tiny_loaded[1].eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 96, 96, generator=torch.Generator().manual_seed(seed))


def test_cached_tower_outputs_equal_the_tower_and_count_hits(model):
    tower = model.get_vision_tower()
    x = images(3)
    batch = torch.stack([x[0], x[1], x[0], x[2]])  # a repeated image inside one call
    cache = VisionCache(max_images=8)
    with torch.no_grad():
        want = tower(batch, want_cls_attn=True, want_keys=True)
        got = cache(tower, batch, want_cls_attn=True, want_keys=True)
        again = cache(tower, batch[[3, 1]], want_cls_attn=True, want_keys=True)
    # the misses ran as a batch of 3, not 4: equal up to the tower's batch-composition rounding (~1e-7
    # relative, as between any two batch sizes), far below what another image's row would differ by
    tol = dict(rtol=1e-5, atol=1e-7)
    for name in ("features", "cls_attn", "cls_feature", "attn_keys"):
        w = getattr(want, name)
        torch.testing.assert_close(getattr(got, name), w, **tol)
        torch.testing.assert_close(getattr(again, name), w[[3, 1]], **tol)
        with pytest.raises(AssertionError):
            torch.testing.assert_close(getattr(again, name), w[[1, 3]], **tol)
    assert (cache.misses, cache.hits) == (3, 3)
    with torch.no_grad():  # other outputs asked for: a separate entry, not a stale row without keys
        plain = cache(tower, batch[:1])
    assert plain.attn_keys is None and plain.cls_attn is None and cache.misses == 4


def test_lru_keeps_at_most_max_images(model):
    tower = model.get_vision_tower()
    x = images(3, seed=1)
    cache = VisionCache(max_images=2)
    with torch.no_grad():
        cache(tower, x[:2])
        cache(tower, x[2:])  # evicts x[0], the least recently used
        cache(tower, x[1:2])
        assert (cache.misses, cache.hits) == (3, 1)
        cache(tower, x[:1])
    assert cache.misses == 4
    with pytest.raises(ValueError, match="max_images >= 1"):
        VisionCache(0)


@pytest.mark.parametrize("method", METHODS)
def test_reduce_with_cache_equals_without(model, method):
    cfg = ReductionConfig(method=method, n_vis=64).resolve()
    x = images(2, seed=2)
    first, second = torch.stack([x[0], x[1]]), torch.stack([x[1], x[0]])
    cache = VisionCache(max_images=4)
    with torch.no_grad():
        want = [r.features for r in model.reduce(second, cfg)]
        model.reduce(first, cfg, vision_cache=cache)
        got = [r.features for r in model.reduce(second, cfg, vision_cache=cache)]  # every image a hit
        swapped = [r.features for r in model.reduce(first, cfg)]
    assert cache.hits == 2
    for g, w, s in zip(got, want, swapped):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
        assert not torch.equal(s, w)  # a cache that returned the other image's rows would fail above


def test_eval_cli_answers_are_unchanged_and_hits_are_recorded(tiny_liuhaotian, tmp_path):
    from PIL import Image

    from llava_restore.eval import model_vqa_loader

    folder = tmp_path / "img"
    folder.mkdir()
    for i, rgb in enumerate([(200, 30, 30), (30, 200, 30)]):
        Image.new("RGB", (96, 96), rgb).save(folder / f"{i}.png")
    qf = tmp_path / "q.jsonl"
    qf.write_text("".join(json.dumps({"question_id": k, "image": f"{k % 2}.png", "text": f"What is it? {k}"}) + "\n"
                          for k in range(6)))
    base = ["--model-path", tiny_liuhaotian, "--question-file", str(qf), "--image-folder", str(folder),
            "--no-progress", "--device", "cpu", "--batch-size", "2", "--max_new_tokens", "4",
            "--reduction", "divprune", "--n-vis", "64", "--restore"]
    model_vqa_loader.main(base + ["--answers-file", str(tmp_path / "plain.jsonl")])
    model_vqa_loader.main(base + ["--answers-file", str(tmp_path / "cached.jsonl"), "--vision-cache", "4"])
    assert (tmp_path / "plain.jsonl").read_bytes() == (tmp_path / "cached.jsonl").read_bytes()
    stats = json.loads((tmp_path / "cached.jsonl.stats.json").read_text())[-1]
    assert stats["vision_cache"] == {"max_images": 4, "hits": 4, "misses": 2}
