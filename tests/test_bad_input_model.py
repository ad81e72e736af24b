"""Bad checkpoints and images fail with one clear error naming the culprit."""
import os
import shutil

import pytest
from PIL import Image

from llava_restore.model.builder import load_pretrained_model
from llava_restore.model.config import CheckpointError
from llava_restore.model.mm_utils import ImageLoadError, load_image, process_images


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_checkpoint_without_weights(tiny_liuhaotian, tmp_path):
    folder = _copy(tiny_liuhaotian, tmp_path / "ckpt")
    os.remove(os.path.join(folder, "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"has no weights"):
        load_pretrained_model(folder, device="cpu")


def test_checkpoint_without_config(tiny_liuhaotian, tmp_path):
    folder = _copy(tiny_liuhaotian, tmp_path / "ckpt")
    os.remove(os.path.join(folder, "config.json"))
    with pytest.raises(CheckpointError, match=r"has no config.json"):
        load_pretrained_model(folder, device="cpu")


def test_missing_shard_named(tiny_liuhaotian, tmp_path):
    from llava_restore.model.checkpoint import load_state_dict, save_state_dict

    folder = _copy(tiny_liuhaotian, tmp_path / "ckpt")
    sd = load_state_dict(folder)
    os.remove(os.path.join(folder, "model.safetensors"))
    save_state_dict(sd, folder, max_shard_bytes=200_000)
    shards = sorted(f for f in os.listdir(folder) if f.startswith("model-"))
    assert len(shards) >= 2
    load_pretrained_model(folder, device="cpu")  # sharded folder loads
    os.remove(os.path.join(folder, shards[1]))
    with pytest.raises(CheckpointError, match=shards[1]):
        load_pretrained_model(folder, device="cpu")


def test_missing_vision_tower_hub_name_is_explicit(tiny_liuhaotian, tmp_path):
    folder = _copy(tiny_liuhaotian, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"openai/clip-vit-large-patch14-336.*--allow-download"):
        load_pretrained_model(folder, device="cpu", vision_tower="openai/clip-vit-large-patch14-336")


def test_missing_image(tmp_path):
    with pytest.raises(ImageLoadError, match=r"not found: .*nope\.jpg"):
        load_image(tmp_path / "nope.jpg")


def test_truncated_image(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(good, quality=95)
    data = good.read_bytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"bad\.jpg"):
        load_image(bad)


@pytest.mark.parametrize("mode", ["RGBA", "L", "CMYK", "P", "LA", "I;16"])
def test_image_modes_accepted(tmp_path, mode, tiny_loaded):
    _, _, proc, _ = tiny_loaded
    img = Image.new("RGB", (50, 30), (120, 30, 200)).convert(mode)
    ext = "jpg" if mode == "CMYK" else "png"
    path = tmp_path / f"img.{ext}"
    img.save(path)
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (50, 30)
    px = process_images([rgb], proc, "pad")
    assert px.shape == (1, 3, 96, 96)


def test_hub_name_not_cached_is_explicit(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(CheckpointError, match=r"liuhaotian/llava-v1.5-7b.*--allow-download"):
        load_pretrained_model("liuhaotian/llava-v1.5-7b", device="cpu")


def test_missing_local_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"not found: .*nowhere"):
        load_pretrained_model(str(tmp_path / "nowhere"), device="cpu")
