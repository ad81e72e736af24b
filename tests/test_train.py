"""Fine-tuning: DeepSpeed ZeRO-2/3 on CPU (2 ranks, gloo), exact resume, LoRA merge, bad data, config.

The DeepSpeed runs use the playground checkpoint and data when present (a fixed 16-record subset,
so the loss must go down within 30 steps), else a random tiny model on synthetic colour images.
"""
import json
import logging
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava_restore.constants import IGNORE_INDEX
from llava_restore.model.builder import load_pretrained_model, save_pretrained
from llava_restore.model.conversation import build_prompt
from llava_restore.model.mm_utils import tokenizer_image_token
from llava_restore.reduction import make_reduction_config
from llava_restore.tools.make_tiny import build_tiny
from llava_restore.train.config import parse_train_config
from llava_restore.train.data import Collator, DataError, SupervisedDataset, tokenize_conversation
from llava_restore.train.ds_config import load_ds_config

from helpers import assert_distinguishes

REPO = Path(__file__).resolve().parents[1]
PLAYGROUND_MODEL = REPO / "playground" / "cache" / "llava-playground"
PLAYGROUND_DATA = REPO / "playground" / "data"
PLAYGROUND_TRAIN = PLAYGROUND_DATA / "train" / "llava_playground_train.json"
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
QUESTION = "<image>\nWhat color is the image?"
RESTORE_64 = ["--reduction", "divprune", "--n-vis", "64", "--restore"]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread (as the torchrun ranks get): on 2 shared cores it is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_colour_data(root: Path, n: int, seed: int = 0) -> Path:
    """n records: a noisy single-colour image, "What color is the image?" -> its colour name."""
    rnd = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        name = rnd.choice(sorted(COLORS))
        img = Image.new("RGB", (96, 96), COLORS[name])
        for _ in range(30):  # a few grey specks, so no two images are identical
            x, y = rnd.randrange(96), rnd.randrange(96)
            img.putpixel((x, y), (128, 128, 128))
        img.save(root / "images" / f"{i}.png")
        recs.append({"id": f"rec{i}", "image": f"{i}.png",
                     "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": name}]})
    path = root / "train.json"
    path.write_text(json.dumps(recs))
    return path


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """(model folder, data json, image folder) for a random tiny model whose LM head is large enough
    (x10 over make_tiny's init) for LoRA on the decoder to move the loss within a few steps."""
    root = tmp_path_factory.mktemp("train_tiny")
    tok, model, proc = build_tiny(seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    save_pretrained(model, str(root / "model"), tokenizer=tok, image_processor=proc, fmt="liuhaotian")
    data = write_colour_data(root, 48)
    return str(root / "model"), str(data), str(root / "images")


def ds_setup(tiny_setup, tmp_path) -> tuple[list[str], str]:
    """Model/data arguments for the DeepSpeed runs and a label saying which set-up is used."""
    if PLAYGROUND_MODEL.is_dir() and PLAYGROUND_TRAIN.is_file():
        # 16 multi-turn records, 8 per step: the adapter can fit them within 30 steps
        recs = [r for r in json.loads(PLAYGROUND_TRAIN.read_text()) if "image" in r][:16]
        subset = tmp_path / "playground_subset.json"
        subset.write_text(json.dumps(recs))
        return [f"model_path={PLAYGROUND_MODEL}", f"data_path={subset}", f"image_folder={PLAYGROUND_DATA}",
                "lr=5e-3", "lora_r=16", "lora_alpha=32", "max_length=512", "micro_batch_size=4"], "playground"
    model, data, images = tiny_setup
    return [f"model_path={model}", f"data_path={data}", f"image_folder={images}", "lr=1e-2", "lora_r=8",
            "lora_alpha=16", "micro_batch_size=2"], "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], nproc: int = 2, timeout: int = 300) -> None:
    """torchrun with ``nproc`` CPU ranks running the trainer's script entry (as deepspeed would)."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           str(REPO / "llava_restore" / "train" / "train.py"), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]


def assert_same_run(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6), (ra, rb)
        assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-9), (ra, rb)


# ------------------------------------------------------------------------------ DeepSpeed
def test_deepspeed_zero2_loss_decreases_then_zero3_resumes(tiny_setup, tmp_path):
    base, which = ds_setup(tiny_setup, tmp_path)
    common = base + RESTORE_64 + ["lora_dropout=0.05", "warmup_ratio=0.0"]

    # ZeRO-2, 30 steps, projector trainable too
    out2 = tmp_path / "zero2"
    launch(common + ["--deepspeed", str(REPO / "scripts" / "zero2.json"), f"output_dir={out2}", "max_steps=30",
                     "save_steps=15", "tune_mm_projector=true"])
    log2 = read_log(out2)
    assert [r["step"] for r in log2] == list(range(1, 31))
    first, last = [r["loss"] for r in log2[:5]], [r["loss"] for r in log2[-5:]]
    assert sum(last) / 5 < 0.9 * sum(first) / 5, f"{which}: loss did not decrease: first {first}, last {last}"
    assert all(r["tokens_per_s"] > 0 for r in log2)
    ckpt = out2 / "checkpoint-15"
    for name in ("adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin", "trainer_state.json",
                 "rng_state_0.pth", "rng_state_1.pth"):
        assert (ckpt / name).is_file(), name
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 15
    resolved = (out2 / "train_config.yaml").read_text()
    assert "position_mode: retain" in resolved and "size_term: true" in resolved  # the resolved RESTORE preset
    events = list((out2 / "runs").glob("events.out.tfevents.*"))
    assert len(events) == 1, f"TensorBoard must be written by rank 0 only: {events}"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert {"train/loss", "train/lr", "train/tokens_per_s"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("train/loss")) == 30

    # ZeRO-3: 4 steps uninterrupted, and stopped after step 2 then resumed
    z3 = common + ["--deepspeed", str(REPO / "scripts" / "zero3.json"), "max_steps=4", "save_steps=2", "grad_accum=2",
                   "micro_batch_size=2"]
    full, part = tmp_path / "z3_full", tmp_path / "z3_part"
    launch(z3 + [f"output_dir={full}"])
    launch(z3 + [f"output_dir={part}", "stop_after_steps=2"])
    assert [r["step"] for r in read_log(part)] == [1, 2]
    launch(z3 + [f"output_dir={part}", "--resume"])
    assert_same_run(read_log(full), read_log(part))
    assert (part / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------------- resume, plain torch
def plain_args(tiny_setup, out: Path, *extra: str) -> list[str]:
    model, data, images = tiny_setup
    return [f"model_path={model}", f"data_path={data}", f"image_folder={images}", f"output_dir={out}", *RESTORE_64,
            "lr=1e-2", "lora_r=8", "lora_alpha=16", "lora_dropout=0.1", "micro_batch_size=3", "grad_accum=2",
            "max_steps=20", "save_steps=3", "tune_mm_projector=true", "report_to=none", *extra]


@pytest.fixture(scope="module")
def resumed_run(tiny_setup, tmp_path_factory):
    """An uninterrupted 20-step run, and one stopped after step 7 then resumed.  48 records in
    micro-batches of 3 with grad_accum 2 make 8 steps per epoch, so the resumed part crosses two
    epoch boundaries; LoRA dropout makes the RNG state matter."""
    from llava_restore.train.train import main

    root = tmp_path_factory.mktemp("resume")
    full, part = root / "full", root / "part"
    main(plain_args(tiny_setup, full))
    stopped = main(plain_args(tiny_setup, part, "stop_after_steps=7"))
    assert stopped["stopped"] and stopped["global_step"] == 7
    with open(part / "train_log.jsonl", "a") as f:  # a killed run may have logged past its last checkpoint
        f.write(json.dumps({"step": 8, "loss": 123.0}) + "\n")
    main(plain_args(tiny_setup, part, "--resume"))
    return full, part


def test_resume_continues_identically(resumed_run):
    full, part = resumed_run
    a, b = read_log(full), read_log(part)
    assert [r["step"] for r in a] == list(range(1, 21))
    assert len({r["epoch"] for r in a}) == 3  # the run crosses two epoch boundaries
    assert_same_run(a, b)
    assert a[-1]["lr"] == pytest.approx(0.0, abs=1e-12) and a[0]["lr"] > a[10]["lr"]  # cosine to zero
    ckpts = sorted(int(p.name.split("-")[1]) for p in part.glob("checkpoint-*"))
    assert ckpts == [3, 6, 7, 9, 12, 15, 18, 20]


# ----------------------------------------------------------------------------------- merge
def test_merge_matches_base_plus_peft(resumed_run, tiny_setup, tmp_path):
    """The merged folder (and base + adapter loaded directly) equal base + trained projector + peft's
    unmerged LoRA; a merge that drops the projector, the adapter, or gets the LoRA scale wrong
    must miss that by far."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    from llava_restore.train.merge_lora import main as merge_main

    _, lora_dir = resumed_run
    base_dir = tiny_setup[0]
    merged_dir = tmp_path / "merged"
    merge_main(["--model-path", str(lora_dir), "--model-base", base_dir, "--save-model-path", str(merged_dir)])

    # reference: the base, its projector replaced by the trained one, LoRA applied (unmerged) by peft
    _, ref, _, _ = load_pretrained_model(base_dir, device="cpu")
    extra = torch.load(lora_dir / "non_lora_trainables.bin", weights_only=True)
    assert extra and all(k.startswith("base_model.model.model.mm_projector.") for k in extra)
    ref.load_state_dict({k[len("base_model.model."):]: v for k, v in extra.items()}, strict=False)
    ref = PeftModel.from_pretrained(ref, str(lora_dir)).eval()
    _, base, _, _ = load_pretrained_model(base_dir, device="cpu")
    _, no_proj, _, _ = load_pretrained_model(base_dir, device="cpu")  # wrong: the trained projector left out
    no_proj = PeftModel.from_pretrained(no_proj, str(lora_dir)).eval()
    tok, merged, proc, _ = load_pretrained_model(str(merged_dir), device="cpu")
    _, direct, _, _ = load_pretrained_model(str(lora_dir), model_base=base_dir, device="cpu")
    lora_layers = [m for m in ref.modules() if isinstance(m, LoraLayer)]
    assert lora_layers

    def lora_scale(factor):  # wrong: alpha / r off by ``factor``
        for m in lora_layers:
            for k in m.scaling:
                m.scaling[k] *= factor

    ids = torch.tensor([[1, 40, 41, -200, 42, 43, 44], [1, 50, -200, 51, 52, 53, 54]])
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    red = make_reduction_config(method="divprune", n_vis=64, restore=True).resolve()
    for reduction in (None, red):
        def logits(model):
            return model(ids, torch.ones_like(ids), images, reduction=reduction).logits

        with torch.no_grad():
            want, got, got_direct = logits(ref), logits(merged), logits(direct)
            lora_scale(2.0)
            wrong = {"LoRA scale x2": logits(ref)}
            lora_scale(0.5)
            wrong.update({"adapter not applied": logits(base), "trained projector left out": logits(no_proj)})
        assert_distinguishes(want, got, wrong, rtol=1e-5, atol=1e-5)
        assert_distinguishes(want, got_direct, wrong, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------- bad data
def _dataset(tmp_path, recs, tiny_loaded, **kw):
    tok, _, proc, _ = tiny_loaded
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(recs))
    return SupervisedDataset(str(path), str(tmp_path), tok, proc, **kw)


def _good(i):
    return {"id": f"ok{i}", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "red"}]}


@pytest.mark.parametrize("bad, message", [
    ({"id": "noimg", "image": "missing.png", "conversations": [{"from": "human", "value": QUESTION},
                                                               {"from": "gpt", "value": "red"}]}, "image file not found"),
    ({"id": "empty", "conversations": []}, "empty conversation"),
    ({"id": "mute", "conversations": [{"from": "human", "value": "Hi"}]}, "no assistant"),
])
def test_bad_records_name_the_record(tmp_path, tiny_loaded, bad, message):
    with pytest.raises(DataError) as exc:
        _dataset(tmp_path, [_good(0), _good(1), bad], tiny_loaded)
    text = str(exc.value)
    assert message in text and "record 2" in text and f"id={bad['id']!r}" in text and "bad.json" in text


def test_malformed_training_json_names_file_and_line(tmp_path):
    from llava_restore.train.data import load_conversations

    bad = tmp_path / "mix.json"
    bad.write_text('[\n  {"id": "a"},\n  {"id": "b",}\n]')
    with pytest.raises(DataError, match=r"mix\.json:3: malformed JSON"):
        load_conversations(str(bad))
    bad.write_text('{"id": "a"}')
    with pytest.raises(DataError, match=r"mix\.json: expected a JSON list of records, got dict"):
        load_conversations(str(bad))


def test_overlong_record_is_truncated_and_counted(tiny_setup, tmp_path, caplog):
    from llava_restore.train.train import main

    model, _, images = tiny_setup
    tok, _, _, _ = load_pretrained_model(model, device="cpu")
    turns = [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": "red"}]
    n_normal = tokenize_conversation(turns, tok, "vicuna_v1", "x")[0].shape[0]
    recs = [{"id": f"r{i}", "image": f"{i}.png", "conversations": turns} for i in range(3)]
    recs.append({"id": "long", "image": "3.png", "conversations": [
        turns[0], {"from": "gpt", "value": " ".join(["red"] * 60)}]})
    data = tmp_path / "long.json"
    data.write_text(json.dumps(recs))
    max_len = n_normal + 4
    caplog.set_level(logging.INFO)
    res = main([f"model_path={model}", f"data_path={data}", f"image_folder={images}", f"output_dir={tmp_path / 'o'}",
                f"max_length={max_len}", "micro_batch_size=4", "max_steps=1", "report_to=none", "lora_r=4"])
    assert res["n_truncated"] == 1
    assert any("id='long'" in r.getMessage() and f"truncated to max_length={max_len}" in r.getMessage()
               for r in caplog.records)
    assert any("1 record(s) truncated" in r.getMessage() for r in caplog.records)

    # the truncated example keeps exactly max_length tokens, its kept answer tokens still supervised
    ds = SupervisedDataset(str(data), images, tok, load_pretrained_model(model, device="cpu")[2], max_length=max_len)
    batch = Collator(tok.pad_token_id)([ds[3], ds[0]])
    assert batch["n_truncated"] == 1 and batch["input_ids"].shape[1] == max_len
    n_prompt = len(tokenizer_image_token(build_prompt(QUESTION, "vicuna_v1"), tok))  # up to "ASSISTANT:"
    assert int((batch["labels"][0] != IGNORE_INDEX).sum()) == max_len - n_prompt


def test_truncation_cutting_the_image_fails(tmp_path, tiny_loaded):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rec = {"id": "cut", "image": "a.png", "conversations": [{"from": "human", "value": "word " * 40 + "<image>"},
                                                            {"from": "gpt", "value": "red"}]}
    ds = _dataset(tmp_path, [rec], tiny_loaded, max_length=10)
    with pytest.raises(DataError, match=r"record 0 \(id='cut'\).*cuts off the <image>"):
        ds[0]


# ---------------------------------------------------------------------------------- config
def test_config_cli_and_typos():
    req = ["model_path=m", "data_path=d", "output_dir=o"]
    cfg = parse_train_config(req + ["--learning_rate", "1e-3", "--bf16", "True", "--per_device_train_batch_size", "8",
                                    "--reduction", "divprune", "--n-vis", "64", "--restore", "--local_rank=1",
                                    "--reduction-opts", "anchor_rule=dpc_higher", "distance_c=3", "--resume"])
    assert (cfg.lr, cfg.precision, cfg.micro_batch_size, cfg.resume) == (1e-3, "bf16", 8, True)
    r = cfg.reduction
    assert (r.method, r.n_vis, r.restore, r.anchor_rule, r.distance_c) == ("divprune", 64, True, "dpc_higher", 3.0)
    with pytest.raises(ValueError, match="'lrr'"):
        parse_train_config(req + ["lrr=1"])
    with pytest.raises(ValueError, match="reduction.methd"):
        parse_train_config(req + ["reduction.methd=divprune"])
    with pytest.raises(ValueError, match="'output_dir'"):
        parse_train_config(["model_path=m", "data_path=d"])
    with pytest.raises(ValueError, match="lora_target_modules"):
        parse_train_config(req + ["lora_target_modules=[q_proj,fc1]"])
    with pytest.raises(ValueError, match="lora_enable"):
        parse_train_config(req + ["--lora_enable", "False"])


def test_deepspeed_config_auto_fields(tmp_path):
    cfg = parse_train_config(["model_path=m", "data_path=d", "output_dir=o", "micro_batch_size=4", "grad_accum=3",
                              "precision=bf16", "max_grad_norm=0.5"])
    ds = load_ds_config(str(REPO / "scripts" / "zero3.json"), cfg, world_size=2, hidden_size=10)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (4, 3, 24)
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False and ds["gradient_clipping"] == 0.5
    z = ds["zero_optimization"]
    assert (z["stage"], z["reduce_bucket_size"], z["stage3_prefetch_bucket_size"],
            z["stage3_param_persistence_threshold"]) == (3, 100, 90, 100)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_micro_batch_size_per_gpu": 16}))
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=16 contradicts"):
        load_ds_config(str(bad), cfg, 2, 10)
    bad.write_text(json.dumps({"optimizer": {"type": "AdamW"}}))
    with pytest.raises(ValueError, match="'optimizer'"):
        load_ds_config(str(bad), cfg, 2, 10)
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2, "sub_group_size": "auto"}}))
    with pytest.raises(ValueError, match="zero_optimization.sub_group_size is 'auto'"):
        load_ds_config(str(bad), cfg, 2, 10)
