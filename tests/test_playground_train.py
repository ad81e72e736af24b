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
