"""Playground training: a short run decreases the loss, and its checkpoint loads and generates."""
import json

import pytest
import torch

from llava_restore.model.builder import load_pretrained_model
from llava_restore.playground.train import PlaygroundTrainConfig, patch_labels, train
from llava_restore.tools.make_tiny import TinySpec


def test_patch_labels_by_hand():
    scene = {"objects": [{"shape": "circle", "color": "red", "size": "small", "x": 0, "y": 4, "w": 8}],
             "texts": [{"text": "AB", "color": "blue", "kind": "word", "x": 20, "y": 0, "w": 4, "h": 4}]}
    lab = patch_labels(scene, grid=6, patch=4).view(3, 6, 6)  # patch centres at 2, 6, 10, ...
    # the circle covers pixels x in [0, 8), y in [4, 12): patch centres x in {2, 6}, y in {6, 10}
    from llava_restore.playground import vocab
    red, circle = list(vocab.COLORS).index("red") + 1, list(vocab.SHAPES).index("circle") + 1
    expect = torch.zeros(6, 6, dtype=torch.long)
    expect[1:3, 0:2] = red
    assert torch.equal(lab[0][:, :2], expect[:, :2])
    assert lab[1][1, 0] == circle and lab[2][1, 0] == 1  # small = 1
    assert lab[1][0, 5] == len(vocab.SHAPES) + 1 and lab[0][0, 5] == list(vocab.COLORS).index("blue") + 1
    assert lab[2][0, 5] == 0  # texts have no size class
    assert int((lab[0] > 0).sum()) == 4 + 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from llava_restore.playground.config import Sizes
    from llava_restore.playground.data import build

    root = tmp_path_factory.mktemp("pg")
    build(str(root / "data"), seed=0, sizes=Sizes.tiny(), progress=False)
    cfg = PlaygroundTrainConfig(data=str(root / "data"), out=str(root / "ckpt"), tb_dir=str(root / "tb"), steps=20,
                                batch_size=4, lr=3e-3, warmup=2, vision_pretrain_steps=4, vision_pretrain_batch=4,
                                model=TinySpec(vision_hidden=32, vision_layers=2, hidden=64, layers=2, intermediate=128,
                                               vocab_size=400), log_every=5)
    return cfg, train(cfg)


def test_short_training_decreases_loss(tiny_run):
    cfg, summary = tiny_run
    assert summary["final_loss"] < 0.8 * summary["first_loss"]
    with open(f"{cfg.out}/train_summary.json") as f:
        assert json.load(f)["steps"] == 20


def test_checkpoint_round_trips(tiny_run):
    from llava_restore.model.conversation import build_prompt
    from llava_restore.model.mm_utils import load_image, process_images, tokenizer_image_token

    cfg, _ = tiny_run
    tok, model, proc, _ = load_pretrained_model(cfg.out, device="cpu")
    assert model.config.source_format == "liuhaotian" and model.get_vision_tower().num_patches == 576
    with open(f"{cfg.data}/scenes/train.jsonl") as f:
        img = json.loads(f.readline())["image"]
    px = process_images([load_image(f"{cfg.data}/{img}")], proc, model.config.image_aspect_ratio)
    ids = tokenizer_image_token(build_prompt("<image>\nWhat color is the background?"), tok, return_tensors="pt")[None]
    out = model.generate(ids, images=px, max_new_tokens=3)
    assert out.shape[0] == 1 and out.shape[1] >= 1


def test_tokenizer_keeps_words_apart_from_punctuation_and_newlines():
    # A BPE trained on templated prompts must not fuse "cross?\nAnswer" into one token: the object
    # word has to be the same token at the end of a question as anywhere else.
    from llava_restore.tools.tokenizer import build_tokenizer

    corpus = ["What color is the cross?\nAnswer the question using a single word or phrase."] * 200
    corpus += ["Is there a red cross in the image?\nAnswer the question using a single word or phrase."] * 200
    tok = build_tokenizer(corpus, vocab_size=300)
    end = tok.convert_ids_to_tokens(tok.encode("What color is the cross?\nAnswer", add_special_tokens=False))
    mid = tok.convert_ids_to_tokens(tok.encode("Is there a red cross in the image?", add_special_tokens=False))
    assert "▁cross" in end and "▁cross" in mid, (end, mid)
    assert end[-3:] == ["?", "\n", "Answer"], end
    text = "USER: What color is the cross?\nAnswer the question. ASSISTANT: Red"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_pair_bag_by_hand():
    from llava_restore.playground import vocab
    from llava_restore.playground.train import pair_bag

    scene = {"objects": [{"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}],
             "texts": [{"text": "AB", "color": "green"}]}
    bag = pair_bag(scene)
    S = len(vocab.SHAPES)
    assert bag.shape == (len(vocab.COLORS) * S,) and bag.sum() == 2  # texts are not objects
    C = list(vocab.COLORS)
    assert bag[C.index("red") * S + vocab.SHAPES.index("circle")] == 1
    assert bag[C.index("blue") * S + vocab.SHAPES.index("square")] == 1
    assert bag[C.index("red") * S + vocab.SHAPES.index("square")] == 0  # colours and shapes stay bound


def test_vision_init_autocast_and_bag_objective(tiny_run, tmp_path):
    """A run that loads the first run's ViT (stage 1 skipped) keeps it bit for bit; the bfloat16
    autocast and the image-level bag objective run; stage 1 alone (steps=0) saves a checkpoint."""
    from dataclasses import replace

    from safetensors.torch import load_file

    cfg, _ = tiny_run
    warm = replace(cfg, out=str(tmp_path / "a"), tb_dir=str(tmp_path / "tba"), steps=3, autocast="bfloat16",
                   vision_init=f"{cfg.out}/vision_tower")
    s = train(warm)
    assert s["stage1_final_loss"] is None and s["final_loss"] == s["final_loss"]  # no stage 1; loss not NaN
    a, b = load_file(f"{cfg.out}/vision_tower/model.safetensors"), load_file(f"{warm.out}/vision_tower/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    bag = replace(cfg, out=str(tmp_path / "b"), tb_dir=str(tmp_path / "tbb"), steps=0, vision_bag_weight=1.0)
    s = train(bag)
    assert s["final_loss"] is None and s["stage1_final_loss"] > 0
    c = load_file(f"{bag.out}/vision_tower/model.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the bag loss changed stage 1

    with pytest.raises(ValueError, match="autocast='float16'"):
        train(replace(warm, autocast="float16"))
    with pytest.raises(FileNotFoundError, match="vision_init='/nowhere'"):
        train(replace(warm, vision_init="/nowhere"))


def test_cli_overrides_may_follow_options():
    from llava_restore.playground.train import parse

    cfg = parse(["autocast=bfloat16", "--out", "x", "tb_dir=y", "--steps", "7", "model.hidden=64"])
    assert (cfg.autocast, cfg.out, cfg.tb_dir, cfg.steps, cfg.model.hidden) == ("bfloat16", "x", "y", 7, 64)
    with pytest.raises(Exception, match="autocastt"):
        parse(["autocastt=bfloat16"])
