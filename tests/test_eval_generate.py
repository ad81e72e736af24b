"""Generation CLIs, batching, resume, sharding/merging, run folders and bad input (tiny random model)."""
import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llava_restore.eval import model_vqa_loader, model_vqa_mmbench, model_vqa_ocrbench, model_vqa_science, run
from llava_restore.eval.answers import AnswerFileError, MergeError, read_jsonl
from llava_restore.eval.eval_pope import main as pope_main
from llava_restore.eval.generate import (MissingImageError, QuestionFileError, Sample, answer_id, choose_key_fn,
                                         cli_entry, get_chunk)

REPO = Path(__file__).resolve().parents[1]
N_Q = 20
MAX_NEW = "4"
RESTORE = ["--reduction", "divprune", "--n-vis", "64", "--restore"]
CATS = ("adversarial", "random", "popular")
WORDS = ("red square", "blue circle", "green triangle", "cat", "dog", "tree", "car", "house", "bird", "boat")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here and in the subprocess: same numerics, and much faster than two
    spinning threads on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random model whose answers depend on the image and the question (weights scaled up)."""
    from llava_restore.model.builder import save_pretrained
    from llava_restore.tools.make_tiny import build_tiny

    tok, model, proc = build_tiny(seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("model.vision_tower") and p.dim() > 1 and "embed" not in name:
                p.mul_(10.0)
    out = tmp_path_factory.mktemp("tiny_sensitive")
    save_pretrained(model, str(out), tokenizer=tok, image_processor=proc, fmt="liuhaotian")
    return str(out)


def write_pope(root: Path) -> Path:
    """A POPE-layout data root with N_Q questions (3 categories), one random image each."""
    pope = root / "pope"
    (pope / "val2014").mkdir(parents=True)
    (pope / "coco").mkdir()
    rng = np.random.default_rng(0)
    labels = {c: [] for c in CATS}
    with open(pope / "llava_pope_test.jsonl", "w") as f:
        for i in range(N_Q):
            side = int(rng.integers(40, 120))  # non-square sizes exercise pad-to-square
            Image.fromarray(rng.integers(0, 256, (side, 96, 3), dtype=np.uint8)).save(pope / "val2014" / f"{i}.png")
            cat = CATS[i * len(CATS) // N_Q]
            f.write(json.dumps({"question_id": i + 1, "image": f"{i}.png", "category": cat,
                                "text": f"Is there a {WORDS[i % len(WORDS)]} in the image?\n"
                                        "Answer the question using a single word or phrase."}) + "\n")
            labels[cat].append({"question_id": len(labels[cat]) + 1, "label": "yes" if i % 2 else "no"})
    for cat in CATS:
        (pope / "coco" / f"coco_pope_{cat}.json").write_text("".join(json.dumps(r) + "\n" for r in labels[cat]))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pope(tmp_path_factory.mktemp("data"))


def loader_argv(ckpt, data_root, answers, *extra):
    return ["--model-path", ckpt, "--question-file", str(data_root / "pope" / "llava_pope_test.jsonl"),
            "--image-folder", str(data_root / "pope" / "val2014"), "--answers-file", str(answers),
            "--max_new_tokens", MAX_NEW, "--temperature", "0", "--conv-mode", "vicuna_v1", "--no-progress",
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def reference(ckpt, data, tmp_path_factory):
    """Uninterrupted bs=1 run with DivPrune-64 + RESTORE: the answers file's bytes."""
    out = tmp_path_factory.mktemp("ref") / "answers.jsonl"
    model_vqa_loader.main(loader_argv(ckpt, data, out, "--batch-size", "1", *RESTORE))
    return out.read_bytes()


def qids(path):
    return [r["question_id"] for r in read_jsonl(path)]


def test_get_chunk_splits_like_llava():
    items = list(range(10))  # LLaVA: chunk size ceil(10/4) = 3 -> [0:3], [3:6], [6:9], [9:10]
    assert [get_chunk(items, 4, k) for k in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    # ceil(10/6) = 2: LLaVA has only 5 chunks; the 6th is empty here
    assert [get_chunk(items, 6, k) for k in range(6)] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], []]
    with pytest.raises(ValueError, match="chunk-idx 4"):
        get_chunk(items, 4, 4)


def test_answer_file_fields_and_model_dependence(reference, ckpt):
    recs = [json.loads(line) for line in reference.decode().splitlines()]
    assert [r["question_id"] for r in recs] == list(range(1, N_Q + 1))
    assert list(recs[0]) == ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
    assert recs[0]["prompt"] == "Is there a red square in the image?\nAnswer the question using a single word or phrase."
    assert recs[0]["model_id"] == Path(ckpt).name and recs[0]["metadata"] == {}
    assert recs[0]["answer_id"] == answer_id(Path(ckpt).name, 1) and len(recs[0]["answer_id"]) == 22
    assert len({r["text"] for r in recs}) > 3, "the test model must answer differently per question"


def test_batched_equals_single_with_restore(reference, ckpt, data, tmp_path):
    out = tmp_path / "bs4.jsonl"
    stats = model_vqa_loader.main(loader_argv(ckpt, data, out, "--batch-size", "4", *RESTORE))
    assert stats["n_generated"] == N_Q and stats["batch_size"] == 4
    assert out.read_bytes() == reference
    timing = json.loads(Path(str(out) + ".stats.json").read_text())
    assert len(timing) == 1 and timing[0]["prefill_s"] > 0 and timing[0]["generate_s"] >= timing[0]["prefill_s"]


def test_answer_bytes_see_planted_errors(reference, ckpt, data, tmp_path, monkeypatch):
    """The byte comparison above can fail: batched runs with a planted error (prefill laid out with
    the wrong padding side, decode positions off by one) or one RESTORE term off give other answers."""
    from llava_restore.model.llava_llama import LlavaLlamaForCausalLM as Model

    forward, prepare = Model.forward, Model.prepare_multimodal

    def right_padded_prefill(self, *args, **kw):  # generate reads the last column: a pad for short rows
        if kw.get("cache") is None and kw.get("padding_side") == "left":
            kw["padding_side"] = "right"
        return forward(self, *args, **kw)

    def decode_one_late(self, *args, **kw):
        prep = prepare(self, *args, **kw)
        prep.next_pos = prep.next_pos + 1
        return prep

    def answers(name, *extra, patch=None):
        with monkeypatch.context() as m:
            if patch is not None:
                m.setattr(Model, *patch)
            model_vqa_loader.main(loader_argv(ckpt, data, tmp_path / f"{name}.jsonl", *extra))
        return (tmp_path / f"{name}.jsonl").read_text().splitlines()

    ref = reference.decode().splitlines()
    runs = {"wrong padding side": answers("pad", "--batch-size", "4", *RESTORE, patch=("forward", right_padded_prefill)),
            "decode positions off by one": answers("pos", "--batch-size", "4", *RESTORE,
                                                   patch=("prepare_multimodal", decode_one_late)),
            "no distance term": answers("dist", "--batch-size", "4", *RESTORE, "--reduction-opts", "distance_term=false")}
    differ = {name: sum(a != b for a, b in zip(lines, ref)) for name, lines in runs.items()}
    print("answers that differ from the reference (of 20):", differ)
    assert all(len(lines) == N_Q for lines in runs.values()) and min(differ.values()) > 0, differ


def test_resume_after_real_kill(reference, ckpt, data, tmp_path):
    out = tmp_path / "answers.jsonl"
    cmd = [sys.executable, "-m", "llava_restore.eval.model_vqa_loader",
           *loader_argv(ckpt, data, out, "--batch-size", "1", *RESTORE)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    k = 3
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= k:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"run ended before the kill: {err.decode()[-500:]}"
    done = out.read_bytes().count(b"\n")
    assert k <= done < N_Q
    with open(out, "ab") as f:  # what a kill in the middle of a write leaves
        f.write(b'{"question_id": 99, "prompt": "Is th')
    with pytest.warns(UserWarning, match="truncated last line"):
        stats = model_vqa_loader.main(loader_argv(ckpt, data, out, "--batch-size", "2", *RESTORE))
    assert stats["n_already"] >= done and stats["n_generated"] == N_Q - stats["n_already"]
    assert out.read_bytes() == reference
    ids = qids(out)
    assert len(ids) == len(set(ids)) == N_Q
    again = model_vqa_loader.main(loader_argv(ckpt, data, out, *RESTORE))  # nothing left: model not even loaded
    assert again["n_generated"] == 0 and again["n_already"] == N_Q and out.read_bytes() == reference


def run_argv(ckpt, data_root, out_root, *extra):
    return ["--benchmark", "pope", "--model-path", ckpt, "--data-root", str(data_root), "--output-root",
            str(out_root), "--max_new_tokens", MAX_NEW, "--no-progress", "--device", "cpu", *RESTORE, *extra]


def test_run_shards_merge_and_result(reference, ckpt, data, tmp_path):
    argv = run_argv(ckpt, data, tmp_path, "--num-chunks", "2", "--batch-size", "3")
    run.main(argv + ["--stage", "generate", "--chunk-idx", "0"])
    with pytest.raises(MergeError) as exc:
        run.main(argv + ["--stage", "finalize"])
    msg = str(exc.value)
    assert "2_1.jsonl" in msg and "10 of 20 question ids have no answer" in msg
    assert "11, 12, 13" in msg and ", 10," not in msg  # chunk 1 holds questions 11..20
    run.main(argv + ["--stage", "generate", "--chunk-idx", "1"])
    result = run.main(argv + ["--stage", "finalize"])
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == tmp_path / "pope" / Path(ckpt).name
    assert run_dir.name.startswith("divprune-n64-restore-") and len(run_dir.name.rsplit("-", 1)[1]) == 8
    assert (run_dir / "answers.jsonl").read_bytes() == reference
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["n_questions"] == N_Q and saved["n_answered"] == N_Q and saved["n_skipped"] == 0
    assert saved["reduction"]["position_mode"] == "retain" and saved["reduction"]["size_term"] is True
    assert saved["main_metric"]["name"] == "mean_f1" and saved["metrics"]["n_answers"] == N_Q
    assert set(saved["metrics"]["categories"]) == set(CATS)
    t = saved["timings"]
    assert t["n_timed"] == N_Q and t["samples_per_s"] > 0 and t["prefill_ms_per_sample"] > 0
    assert t["generate_ms_per_sample"] >= t["prefill_ms_per_sample"] and t["peak_memory_mb"] > 0
    assert len(saved["git"]["commit"]) == 40
    assert saved["generation"]["sdpa_kernel"] == "no-cudnn"  # the eval default (docs/eval.md, SDPA back-end)
    # another config -> another folder; the same config -> the same folder
    plain = ["--benchmark", "pope", "--model-path", ckpt, "--data-root", str(data), "--output-root", str(tmp_path),
             "--max_new_tokens", MAX_NEW]

    def folder(*extra):
        return _run_dir(plain + list(extra))

    assert folder(*RESTORE) == run_dir
    assert folder(*RESTORE, "--reduction-opts", "distance_term=false") != run_dir
    assert folder("--reduction", "divprune", "--n-vis", "64") != run_dir
    assert folder(*RESTORE, "--sdpa-kernel", "auto") == run_dir  # a kernel choice is not a new config
    assert folder().name.startswith("full-")


def _run_dir(argv):
    from llava_restore.eval.benchmarks import get_adapter, get_benchmark
    from llava_restore.eval.generate import settings_from_args

    ap = run.build_parser()
    args = ap.parse_args(argv)
    bench = get_benchmark(args.benchmark)
    return run.resolve_run(args, bench, settings_from_args(args, get_adapter(bench.adapter), ap))[0]


def test_missing_image_error_then_skip_flag(ckpt, data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    qf = root / "pope" / "llava_pope_test.jsonl"
    qf.write_text("".join(qf.read_text().splitlines(keepends=True)[:6]))  # questions 1..6
    missing = root / "pope" / "val2014" / "3.png"  # question 4
    missing.unlink()
    out = tmp_path / "answers.jsonl"
    with pytest.raises(MissingImageError) as exc:
        model_vqa_loader.main(loader_argv(ckpt, root, out, "--batch-size", "2"))
    assert str(missing) in str(exc.value) and "question 4" in str(exc.value)
    assert qids(out) == [1, 2, 3]  # the answers before the bad question are kept
    model_vqa_loader.main(loader_argv(ckpt, root, out, "--batch-size", "2", "--skip-missing-images"))
    assert qids(out) == [1, 2, 3, 5, 6]
    errors = read_jsonl(tmp_path / "errors.jsonl")  # next to the answers
    assert [e["question_id"] for e in errors] == [4] and str(missing) in errors[0]["error"]
    metrics = pope_main(["--annotation-dir", str(root / "pope" / "coco"), "--question-file", str(qf),
                         "--result-file", str(out)])
    assert metrics["n_skipped"] == 1


def test_run_skip_missing_images_counts_and_retries(ckpt, data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    for i in (4, 15):  # questions 5 (shard 0) and 16 (shard 1)
        (root / "pope" / "val2014" / f"{i}.png").rename(root / "pope" / f"{i}.png.bak")
    argv = run_argv(ckpt, root, tmp_path / "runs", "--skip-missing-images", "--batch-size", "4", "--num-chunks", "2")
    result = run.main(argv)
    run_dir = Path(result["run_dir"])
    assert result["n_skipped"] == 2 and result["metrics"]["n_skipped"] == 2 and result["n_answered"] == N_Q - 2
    assert result["skipped_question_ids"] == [5, 16]
    assert [e["question_id"] for e in read_jsonl(run_dir / "errors.jsonl")] == [5, 16]
    assert 5 not in qids(run_dir / "answers.jsonl") and len(qids(run_dir / "answers.jsonl")) == N_Q - 2
    # the images come back: a rerun answers exactly the two skipped questions and clears errors.jsonl
    for i in (4, 15):
        (root / "pope" / f"{i}.png.bak").rename(root / "pope" / "val2014" / f"{i}.png")
    result = run.main(argv)
    assert result["n_skipped"] == 0 and result["n_answered"] == N_Q and not (run_dir / "errors.jsonl").exists()
    assert qids(run_dir / "answers.jsonl") == list(range(1, N_Q + 1))
    assert result["timings"]["n_timed"] == N_Q


def test_malformed_question_line_is_named(ckpt, tmp_path, capsys):
    qf = tmp_path / "q.jsonl"
    good = json.dumps({"question_id": 1, "image": "a.png", "text": "Is it?"})
    qf.write_text(good + "\n" + good.replace(": 1", ": 2") + "\n" + '{"question_id": 3, "image": "a.png",\n')
    argv = ["--model-path", ckpt, "--question-file", str(qf), "--answers-file", str(tmp_path / "a.jsonl")]
    with pytest.raises(AnswerFileError, match=r"q\.jsonl:3: malformed JSON"):
        model_vqa_loader.main(argv)
    with pytest.raises(SystemExit) as exc:
        cli_entry(model_vqa_loader.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and len(err) == 1 and err[0].startswith("error: ") and "q.jsonl:3" in err[0]
    qf.write_text(good + "\n" + json.dumps({"question_id": 2, "text": "no image field"}) + "\n")
    with pytest.raises(QuestionFileError, match=r"q\.jsonl:2: .*\['image'\]"):
        model_vqa_loader.main(argv)
    assert not (tmp_path / "a.jsonl").exists()


def test_unknown_benchmark_lists_known(capsys):
    with pytest.raises(SystemExit) as exc:
        run.main(["--benchmark", "popee", "--model-path", "x"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "unknown benchmark 'popee'" in err
    assert "gqa, mmbench, mme, ocrbench, pope, seed, sqa, textvqa, vqav2" in err


def test_duplicate_question_ids_use_compound_key():
    def s(qid, prompt):
        return Sample(head={"question_id": qid, "prompt": prompt}, question="", image=None, image_ref=None, where="f")

    assert choose_key_fn([s(1, "a"), s(2, "a")], "f")({"question_id": 1, "prompt": "a"}) == 1
    mme = choose_key_fn([s("x/1.png", "a"), s("x/1.png", "b")], "f")  # MME: two questions per image
    assert mme({"question_id": "x/1.png", "prompt": "b"}) == ("x/1.png", "b")
    with pytest.raises(QuestionFileError, match="appears twice"):
        choose_key_fn([s(1, "a"), s(1, "a")], "f")


SQA_SUFFIX = "Answer with the option's letter from the given choices directly."


def write_science(tmp_path):
    rng = np.random.default_rng(1)
    recs = []
    for i in range(4):
        rec = {"id": str(10 + i), "conversations": [
            {"from": "human", "value": ("<image>\n" if i % 2 == 0 else "") + f"Question {i}?\nA. yes\nB. no"},
            {"from": "gpt", "value": "A"}]}
        if i % 2 == 0:
            (tmp_path / "img" / rec["id"]).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "img" / rec["id"] / "image.png")
            rec["image"] = f"{rec['id']}/image.png"
        recs.append(rec)
    (tmp_path / "sqa.json").write_text(json.dumps(recs))
    return tmp_path / "sqa.json"


def test_science_prompts_and_mixed_text_only_batch(ckpt, tmp_path):
    qf = write_science(tmp_path)
    samples = model_vqa_science.ADAPTER.load(str(qf), str(tmp_path / "img"), single_pred_prompt=True)
    assert samples[0].head == {"question_id": "10", "prompt": f"<image>\nQuestion 0?\nA. yes\nB. no\n{SQA_SUFFIX}"}
    assert samples[0].question == samples[0].head["prompt"] and samples[0].image is not None
    assert samples[1].head["prompt"] == f"Question 1?\nA. yes\nB. no\n{SQA_SUFFIX}" and samples[1].image is None
    base = ["--model-path", ckpt, "--question-file", str(qf), "--image-folder", str(tmp_path / "img"),
            "--single-pred-prompt", "--max_new_tokens", "3", "--no-progress", *RESTORE]
    model_vqa_science.main(base + ["--answers-file", str(tmp_path / "a1.jsonl")])
    model_vqa_science.main(base + ["--answers-file", str(tmp_path / "a4.jsonl"), "--batch-size", "4"])
    assert (tmp_path / "a1.jsonl").read_bytes() == (tmp_path / "a4.jsonl").read_bytes()
    assert qids(tmp_path / "a1.jsonl") == ["10", "11", "12", "13"]


def test_mmbench_prompt_options_and_fields(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    rows = [["7", "What colour?", "A red patch.", "red", "blue", "green", "", "A", "c", b64],
            ["1000007", "What colour?", "nan", "green", "red", "blue", "", "B", "c", "7"]]
    tsv = tmp_path / "mmb.tsv"
    tsv.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    s0, s1 = model_vqa_mmbench.ADAPTER.load(str(tsv), "", single_pred_prompt=True)
    assert s0.head == {"question_id": 7, "round_id": 0,
                       "prompt": "A red patch.\nWhat colour?\nA. red\nB. blue\nC. green"}
    assert s0.question == "<image>\n" + s0.head["prompt"] + "\n" + SQA_SUFFIX
    assert s0.tail == {"options": ["red", "blue", "green"], "option_char": ["A", "B", "C"]}
    assert s1.head["prompt"] == "What colour?\nA. green\nB. red\nC. blue"  # "nan" hint is empty
    assert s1.image().getpixel((0, 0)) == (255, 0, 0)  # the cell "7" reuses row 7's image


PLAYGROUND_MODEL = REPO / "playground" / "cache" / "llava-playground"
PLAYGROUND_GQA = REPO / "playground" / "data" / "eval" / "gqa"


def test_playground_bs4_equals_bs1_on_50_questions(tmp_path):
    assert PLAYGROUND_MODEL.is_dir(), f"the committed playground checkpoint is missing: {PLAYGROUND_MODEL}"
    if not PLAYGROUND_GQA.is_dir():  # the data is git-ignored: build it (deterministic, ~15 s)
        from llava_restore.playground.data import build

        build(str(REPO / "playground" / "data"), progress=False)
    qf = tmp_path / "q50.jsonl"
    lines = (PLAYGROUND_GQA / "llava_gqa_testdev_balanced.jsonl").read_text().splitlines(keepends=True)[:50]
    qf.write_text("".join(lines))
    base = ["--model-path", str(PLAYGROUND_MODEL), "--question-file", str(qf), "--image-folder",
            str(PLAYGROUND_GQA / "data" / "images"), "--no-progress", "--device", "cpu", *RESTORE]
    model_vqa_loader.main(base + ["--answers-file", str(tmp_path / "bs1.jsonl")])
    model_vqa_loader.main(base + ["--answers-file", str(tmp_path / "bs4.jsonl"), "--batch-size", "4"])
    assert len(qids(tmp_path / "bs1.jsonl")) == 50
    assert (tmp_path / "bs1.jsonl").read_bytes() == (tmp_path / "bs4.jsonl").read_bytes()


@pytest.mark.parametrize("adapter,what", [(model_vqa_science.ADAPTER, "ScienceQA records"),
                                          (model_vqa_ocrbench.ADAPTER, "OCRBench JSON list")])
def test_json_list_question_files_name_the_problem(tmp_path, adapter, what):
    bad = tmp_path / "q.json"
    bad.write_text('[\n  {"id": 1},\n  {"id": 2,,}\n]')
    with pytest.raises(QuestionFileError, match=r"q\.json:3: malformed JSON"):
        adapter.load(str(bad), str(tmp_path))
    bad.write_text('{"id": 1}')
    with pytest.raises(QuestionFileError, match=f"q\\.json: expected .*{what}, got dict"):
        adapter.load(str(bad), str(tmp_path))
    bad.write_text('[7]')
    with pytest.raises(QuestionFileError, match=r"q\.json item #0: expected a JSON object, got int"):
        adapter.load(str(bad), str(tmp_path))


def test_retraining_a_checkpoint_in_place_gives_a_new_run_folder(ckpt, tmp_path):
    """The run folder hashes a content fingerprint of the checkpoint, so answers of old weights are
    never resumed into a run of new ones; a byte-identical copy has the same fingerprint."""
    import shutil

    from llava_restore.eval.run import checkpoint_fingerprint

    model = tmp_path / "m"
    shutil.copytree(ckpt, model)
    fp = checkpoint_fingerprint(str(model))
    assert fp is not None and fp == checkpoint_fingerprint(ckpt) and checkpoint_fingerprint("org/hub-model") is None
    argv = ["--benchmark", "pope", "--model-path", str(model), "--data-root", str(tmp_path), "--output-root",
            str(tmp_path / "out")]
    before = _run_dir(argv)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # "retrained": the last weight bytes change, names and sizes do not
    weights.write_bytes(bytes(data))
    assert checkpoint_fingerprint(str(model)) != fp
    assert _run_dir(argv) != before and _run_dir(argv).parent == before.parent
