"""The eval CLIs on a Qwen2.5-VL folder: its chat template by default, batched answers equal to
bs=1 with RESTORE (images of different sizes, so different N), the benchmark script with
MODEL_PATH pointing at it, and the CLI's bad-input errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import one_thread  # noqa: F401
from llava_restore.eval import run
from llava_restore.eval.answers import read_jsonl
from llava_restore.eval.generate import cli_entry
from qwen_helpers import loaded, tiny_qwen_folder
from test_eval_generate import N_Q, write_pope

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
RESTORE = ["--reduction", "divprune", "--keep-ratio", "0.5", "--restore"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pope(tmp_path_factory.mktemp("qdata"))  # images 96 wide, 40..120 high: N differs


def argv(data, out, *extra):
    return ["--benchmark", "pope", "--model-path", tiny_qwen_folder(), "--data-root", str(data),
            "--output-root", str(out), "--max_new_tokens", "4", "--device", "cpu", "--no-progress", *extra]


def test_chat_template_prompt_and_default_conv_mode():
    from llava_restore.model.qwen2_5_vl import CHAT_TEMPLATE, chat_prompt_ids, default_conv_mode

    tok, _, _ = loaded()
    assert default_conv_mode(tiny_qwen_folder()) == CHAT_TEMPLATE
    ids = chat_prompt_ids("<image>\nIs there a cat?", tok)
    assert tok.decode(ids) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                               "<|vision_start|><|image_pad|><|vision_end|>Is there a cat?<|im_end|>\n"
                               "<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="takes --conv-mode chat_template"):
        chat_prompt_ids("<image>\nHi", tok, "vicuna_v1")


def test_run_batched_equals_bs1_with_restore(data, tmp_path):
    r1 = run.main(argv(data, tmp_path / "a", "--batch-size", "1", *RESTORE))
    r4 = run.main(argv(data, tmp_path / "b", "--batch-size", "4", *RESTORE))
    a1 = read_jsonl(Path(r1["run_dir"]) / "answers.jsonl")
    a4 = read_jsonl(Path(r4["run_dir"]) / "answers.jsonl")
    assert len(a1) == N_Q and [r["text"] for r in a1] == [r["text"] for r in a4]
    assert Path(r1["run_dir"]).name.startswith("divprune-r0.5-restore-")
    saved = json.loads((Path(r4["run_dir"]) / "result.json").read_text())
    assert saved["reduction"]["keep_ratio"] == 0.5 and saved["reduction"]["position_mode"] == "retain"
    assert len({r["text"] for r in a1}) > 1  # answers depend on the question / image
    full = run.main(argv(data, tmp_path / "c", "--batch-size", "4"))
    assert Path(full["run_dir"]).name.startswith("full-")


def test_benchmark_script_with_model_path(data, tmp_path):
    env = dict(os.environ, MODEL_PATH=tiny_qwen_folder(), DATA_ROOT=str(data), OUTPUT_ROOT=str(tmp_path),
               CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable, OMP_NUM_THREADS="1", LLAVA_TEST_THREADS="1")
    p = subprocess.run(["bash", str(REPO / "scripts/v1_5/eval/pope.sh"), "--max_new_tokens", "3", "--batch-size", "4",
                        "--no-progress", *RESTORE], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    results = list(tmp_path.glob("pope/*/divprune-r0.5-restore-*/result.json"))
    assert len(results) == 1 and json.loads(results[0].read_text())["n_answered"] == N_Q


def test_cli_bad_budgets(data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.main(argv(data, tmp_path, "--reduction", "divprune", "--keep-ratio", "1.5"))
    assert "keep_ratio=1.5 must be in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main(argv(data, tmp_path, "--reduction", "divprune", "--keep-ratio", "0.5", "--n-vis", "4"))
    assert "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_entry(run.main, argv(data, tmp_path, "--reduction", "divprune", "--n-vis", "500"))
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: --n-vis 500 is larger than image {data}/pope/val2014/0.png's N=")


def test_text_only_question_in_a_batch():
    from llava_restore.model.qwen2_5_vl import chat_prompt_ids, process_qwen_images
    from qwen_helpers import SIZES, image, left_pad

    tok, model, proc = loaded()
    seqs = [chat_prompt_ids("<image>\nWhat is it?", tok), chat_prompt_ids("Say yes.", tok)]
    ids, mask = left_pad(seqs, tok.pad_token_id)
    images = process_qwen_images([image(0, SIZES[0])], proc)
    both = model.generate(ids, mask, images, max_new_tokens=5, eos_token_id=-1)
    alone = model.generate(seqs[1][None], max_new_tokens=5, eos_token_id=-1)
    assert both[1].tolist() == alone[0].tolist()


FIX = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "llava15-eval"


@pytest.mark.skipif(not FIX.is_dir(), reason=f"LLaVA-1.5 eval fixtures not found at {FIX}")
@pytest.mark.parametrize("name", ["gqa", "mmbench", "mme", "pope", "sqa", "textvqa"])
def test_benchmark_prompts_as_qwen_chat_batches(name):
    """Every adapter's real questions become Qwen chat prompts with one image block per image
    (text-only ScienceQA questions none), and a batch of them answers as each alone."""
    from llava_restore.eval.benchmarks import get_adapter, get_benchmark
    from llava_restore.eval.generate import GenSettings, ModelBundle, PrefillTimer, answer_batch
    from llava_restore.model.qwen2_5_vl import chat_prompt_ids
    from llava_restore.reduction.config import make_reduction_config
    from qwen_helpers import image

    bench = get_benchmark(name)
    folder = {"mme": "mme"}.get(name, bench.folder)  # the fixture folder is lower-case
    samples = get_adapter(bench.adapter).load(str(FIX / folder / bench.question_file), "", **bench.adapter_options)
    picked = samples[:3] + [s for s in samples if s.image is None][:1]  # ScienceQA has text-only ones
    tok, model, proc = loaded()
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    for s in picked:
        ids = chat_prompt_ids(s.question, tok)
        assert int((ids == pad).sum()) == s.question.count("<image>") == int(s.image is not None)
        assert "<image>" not in tok.decode(ids)
    bundle = ModelBundle(tok, model, proc, "tiny-qwen", torch.device("cpu"))
    settings = GenSettings(conv_mode="chat_template", max_new_tokens=3, batch_size=len(picked),
                           reduction=make_reduction_config(method="divprune", keep_ratio=0.5, restore=True).resolve())
    sizes = [(64, 48), (40, 72), (96, 96), (56, 56)]
    batch = [(s, image(i, sizes[i]) if s.image is not None else None) for i, s in enumerate(picked)]
    texts, _ = answer_batch(bundle, batch, settings, None, PrefillTimer(model, bundle.device))
    for item, text in zip(batch, texts):
        assert answer_batch(bundle, [item], settings, None, PrefillTimer(model, bundle.device))[0] == [text]
