"""The vision tower folders we write load everywhere (issue 16, item 6).

transformers 4.3x (LLaVA pins 4.37.2) reads a CLIPVisionModel's tensors only under ``vision_model.*``
and silently re-initialises a tower saved without that prefix; 5.x reads both.  So every writer
(``save_vision_tower``, through ``builder.save_pretrained``: make_tiny, the trainers, merge_lora)
writes the prefixed layout, and our loader reads both layouts strictly.
"""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPModel, CLIPVisionConfig, CLIPVisionModel, LlavaForConditionalGeneration, PretrainedConfig

from llava_restore.model.checkpoint import (CLIP_VISION_PREFIX, TOWER_WEIGHTS, load_vision_tower_folder,
                                            load_vision_tower_weights, save_vision_tower)
from llava_restore.model.config import CheckpointError
from llava_restore.model.vision import CLIPVisionTower, load_vision_tower
from llava_restore.tools.make_tiny import TinySpec, build_tiny, image_processor_for

SPEC = TinySpec()


def _vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=SPEC.vision_hidden, intermediate_size=4 * SPEC.vision_hidden,
                            num_hidden_layers=SPEC.vision_layers, num_attention_heads=SPEC.vision_heads,
                            image_size=SPEC.image_size, patch_size=SPEC.patch_size, projection_dim=SPEC.vision_hidden)


def _random_tower(seed: int = 0) -> CLIPVisionModel:
    """Every tensor random (layer norms included), so a re-initialised tower differs in all of them."""
    vm = CLIPVisionModel(_vision_config()).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vm.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return vm


def _unprefixed(key: str) -> str:
    return key[len(CLIP_VISION_PREFIX):] if key.startswith(CLIP_VISION_PREFIX) else key


def _assert_same_tensors(got: CLIPVisionModel, want: CLIPVisionModel) -> None:
    a = {_unprefixed(k): v for k, v in got.state_dict().items()}
    b = {_unprefixed(k): v for k, v in want.state_dict().items()}
    assert set(a) == set(b)
    for k in b:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _file_keys(path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _rewrite(folder, edit) -> str:
    """Edit the saved tensors of a tower folder in place; returns the file's path."""
    path = folder / TOWER_WEIGHTS
    sd = load_file(path)
    edit(sd)
    save_file(sd, str(path), metadata={"format": "pt"})
    return str(path)


@pytest.fixture
def saved(tmp_path):
    vm = _random_tower()
    folder = tmp_path / "vision_tower"
    save_vision_tower(vm, str(folder), image_processor_for(SPEC.image_size))
    return vm, folder


# ------------------------------------------------------------------------------- what is written
def test_saved_keys_all_carry_the_vision_model_prefix(saved):
    vm, folder = saved
    keys = _file_keys(folder / TOWER_WEIGHTS)
    assert keys and all(k.startswith(CLIP_VISION_PREFIX) for k in keys), [k for k in keys if not k.startswith(CLIP_VISION_PREFIX)]
    assert {_unprefixed(k) for k in keys} == {_unprefixed(k) for k in vm.state_dict()}
    assert "vision_model.embeddings.patch_embedding.weight" in keys and "vision_model.post_layernorm.weight" in keys


def test_saved_config_is_one_an_old_release_reads(saved):
    vm, folder = saved
    conf = json.loads((folder / "config.json").read_text())
    assert conf["architectures"] == ["CLIPVisionModel"] and conf["model_type"] == "clip_vision_model"
    assert conf["torch_dtype"] == conf["dtype"] == "float32"
    clip_fields = set(CLIPVisionConfig().to_dict()) - set(PretrainedConfig().to_dict())
    assert clip_fields <= set(conf), sorted(clip_fields - set(conf))
    for field in clip_fields:
        assert conf[field] == getattr(vm.config, field), field
    assert (folder / "preprocessor_config.json").is_file()


def test_saving_a_half_precision_tower_records_its_dtype(tmp_path):
    vm = _random_tower().to(torch.float16)
    save_vision_tower(CLIPVisionTower(vm), str(tmp_path / "t"))  # our wrapper is accepted too
    conf = json.loads((tmp_path / "t" / "config.json").read_text())
    assert conf["torch_dtype"] == conf["dtype"] == "float16"
    assert {v.dtype for v in load_file(tmp_path / "t" / TOWER_WEIGHTS).values()} == {torch.float16}


def test_saving_over_a_folder_with_other_weight_files_is_refused(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"already holds \['pytorch_model.bin'\]"):
        save_vision_tower(_random_tower(), str(folder))


# ------------------------------------------------------------------------------- reading it back
def test_saved_tower_reloads_identically_through_our_loaders(saved):
    vm, folder = saved
    _assert_same_tensors(load_vision_tower_folder(str(folder)), vm)
    model, proc = load_vision_tower(str(folder))
    _assert_same_tensors(model, vm)
    assert proc.crop_size == {"height": SPEC.image_size, "width": SPEC.image_size}
    fresh = _random_tower(seed=1)
    load_vision_tower_weights(CLIPVisionTower(fresh), str(folder))
    _assert_same_tensors(fresh, vm)


def test_saved_tower_reloads_identically_through_transformers(saved):
    vm, folder = saved
    model, info = CLIPVisionModel.from_pretrained(str(folder), output_loading_info=True)
    assert all(not v for v in info.values()), info
    _assert_same_tensors(model, vm)


def test_the_old_unprefixed_layout_still_loads(tmp_path):
    vm = _random_tower()
    folder = tmp_path / "old"
    vm.save_pretrained(str(folder))  # transformers 5.x's own writer
    image_processor_for(SPEC.image_size).save_pretrained(str(folder))
    keys = _file_keys(folder / TOWER_WEIGHTS)
    sd = load_file(folder / TOWER_WEIGHTS)  # whatever it wrote, make sure this test sees the unprefixed one
    save_file({_unprefixed(k): v for k, v in sd.items()}, str(folder / TOWER_WEIGHTS), metadata={"format": "pt"})
    assert not any(k.startswith(CLIP_VISION_PREFIX) for k in _file_keys(folder / TOWER_WEIGHTS)) and keys
    _assert_same_tensors(load_vision_tower_folder(str(folder)), vm)
    _assert_same_tensors(load_vision_tower(str(folder))[0], vm)
    fresh = _random_tower(seed=1)
    load_vision_tower_weights(fresh, str(folder))
    _assert_same_tensors(fresh, vm)


def test_a_stored_position_ids_buffer_is_not_an_unexpected_tensor(saved):
    """Older releases saved the non-persistent ``embeddings.position_ids`` buffer; it is recomputed."""
    vm, folder = saved
    n_pos = vm.embeddings.position_ids.shape[-1]
    _rewrite(folder, lambda sd: sd.__setitem__("vision_model.embeddings.position_ids", torch.arange(n_pos)[None]))
    _assert_same_tensors(load_vision_tower_folder(str(folder)), vm)
    fresh = _random_tower(seed=1)
    load_vision_tower_weights(fresh, str(folder))
    _assert_same_tensors(fresh, vm)


def test_a_full_clip_checkpoint_loads_its_vision_half(tmp_path):
    """A local copy of a full CLIP model (model_type clip: text + vision) still serves as a tower."""
    from transformers import CLIPConfig, CLIPTextConfig

    text = CLIPTextConfig(hidden_size=SPEC.vision_hidden, intermediate_size=4 * SPEC.vision_hidden,
                          num_hidden_layers=1, num_attention_heads=SPEC.vision_heads, projection_dim=SPEC.vision_hidden)
    clip = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=_vision_config().to_dict(),
                                projection_dim=SPEC.vision_hidden))
    clip.save_pretrained(str(tmp_path / "clip"))
    want = CLIPVisionModel(_vision_config())
    want.load_state_dict({k: v for k, v in clip.vision_model.state_dict().items()}, strict=True)
    _assert_same_tensors(load_vision_tower_folder(str(tmp_path / "clip")), want)


# ------------------------------------------------------------------------------- broken towers
@pytest.mark.parametrize("loader", ["folder", "weights", "load_vision_tower"])
def test_a_tower_missing_a_tensor_fails_with_one_clear_error(saved, loader):
    _, folder = saved
    gone = "vision_model.encoder.layers.1.mlp.fc2.weight"
    path = _rewrite(folder, lambda sd: sd.pop(gone))
    call = {"folder": lambda: load_vision_tower_folder(str(folder)),
            "weights": lambda: load_vision_tower_weights(_random_tower(), str(folder)),
            "load_vision_tower": lambda: load_vision_tower(str(folder))}[loader]
    with pytest.raises(CheckpointError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg and path in msg and "1 missing tensor(s) ['encoder.layers.1.mlp.fc2.weight']" in msg, msg
    assert "unexpected" not in msg


def test_a_tower_with_an_extra_or_misshapen_tensor_fails_naming_them(saved):
    _, folder = saved

    def edit(sd):
        sd["vision_model.encoder.layers.9.mlp.fc1.weight"] = torch.zeros(1)
        sd["vision_model.post_layernorm.bias"] = torch.zeros(SPEC.vision_hidden + 1)

    path = _rewrite(folder, edit)
    with pytest.raises(CheckpointError) as err:
        load_vision_tower_folder(str(folder))
    msg = str(err.value)
    assert path in msg and "1 unexpected tensor(s) ['vision_model.encoder.layers.9.mlp.fc1.weight']" in msg, msg
    assert f"vision_model.post_layernorm.bias [{SPEC.vision_hidden + 1}] != [{SPEC.vision_hidden}]" in msg, msg
    assert "missing" not in msg


def test_a_tower_stored_in_both_layouts_at_once_is_refused(saved):
    _, folder = saved
    path = _rewrite(folder, lambda sd: sd.__setitem__("post_layernorm.bias", sd["vision_model.post_layernorm.bias"].clone()))
    with pytest.raises(CheckpointError) as err:
        load_vision_tower_folder(str(folder))
    assert path in str(err.value) and "'post_layernorm.bias' is stored twice" in str(err.value), str(err.value)


# ------------------------------------------------------------------------------- the writers
def test_make_tiny_writes_prefixed_towers_in_both_formats(tmp_path):
    from llava_restore.tools.make_tiny import main

    main([str(tmp_path / "lh"), "--format", "liuhaotian"])
    assert all(k.startswith(CLIP_VISION_PREFIX) for k in _file_keys(tmp_path / "lh" / "vision_tower" / TOWER_WEIGHTS))
    _, info = CLIPVisionModel.from_pretrained(str(tmp_path / "lh" / "vision_tower"), output_loading_info=True)
    assert all(not v for v in info.values()), info

    main([str(tmp_path / "hf"), "--format", "hf"])
    tower_keys = [k for k in _file_keys(tmp_path / "hf" / TOWER_WEIGHTS) if k.startswith("vision_tower.")]
    assert tower_keys and all(k.startswith("vision_tower." + CLIP_VISION_PREFIX) for k in tower_keys)
    hf, info = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert all(not v for v in info.values()), info
    _, ours, _ = build_tiny(seed=0)
    want = ours.get_vision_tower().vision_tower.state_dict()
    got = {_unprefixed(k[len("model.vision_tower."):]): v for k, v in hf.state_dict().items()
           if k.startswith("model.vision_tower.")}
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_merge_lora_writes_a_prefixed_tower(tmp_path):
    from llava_restore.model.builder import load_pretrained_model, save_pretrained
    from llava_restore.train.lora import apply_lora, save_adapter, trainable_state
    from llava_restore.train.merge_lora import merge_lora

    tok, model, proc = build_tiny(seed=0)
    with torch.no_grad():  # a tower unlike a fresh init, so a re-initialised one cannot pass
        for p in model.get_vision_tower().parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    base = tmp_path / "base"
    save_pretrained(model, str(base), tokenizer=tok, image_processor=proc, fmt="liuhaotian")
    _, loaded, _, _ = load_pretrained_model(str(base), device="cpu")
    peft_model = apply_lora(loaded, r=2, alpha=4, dropout=0.0, target_modules=["q_proj"], tune_mm_projector=False,
                            base_name=str(base))
    save_adapter(peft_model, str(tmp_path / "lora"), trainable_state(peft_model))
    merge_lora(str(tmp_path / "lora"), str(base), str(tmp_path / "merged"))

    tower_dir = tmp_path / "merged" / "vision_tower"
    assert all(k.startswith(CLIP_VISION_PREFIX) for k in _file_keys(tower_dir / TOWER_WEIGHTS))
    got, info = CLIPVisionModel.from_pretrained(str(tower_dir), output_loading_info=True)
    assert all(not v for v in info.values()), info
    _assert_same_tensors(got, model.get_vision_tower().vision_tower)
