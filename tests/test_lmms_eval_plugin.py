"""The lmms-eval plug-in (llava_restore/integrations): model ``llava_restore`` and the local tasks.

Runs in .venv-lmms (``bash scripts/setup_lmms_env.sh``; scripts/test.sh makes it before pytest).
In any other venv (no lmms_eval) this module holds one test, which runs this file inside
.venv-lmms and fails when that venv is missing: the plug-in test is never skipped, and the core
suite (what CI runs) always executes it.

Inside .venv-lmms: ``python -m lmms_eval --model llava_restore`` with DivPrune-64+RESTORE on the
tiny and the playground model over ``playground_gqa,playground_pope`` (a subset of the questions,
in a working directory that holds only that subset) must give, at --batch_size 1 and 4, the
answers ``model_vqa_loader`` gives on the same questions, and the metrics our scorers give on
those answers.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LMMS_VENV = REPO / ".venv-lmms"
IN_LMMS_VENV = importlib.util.find_spec("lmms_eval") is not None

if not IN_LMMS_VENV:
    def test_plugin_suite_runs_in_the_lmms_venv():
        python = LMMS_VENV / "bin" / "python"
        assert python.is_file(), (f"{LMMS_VENV} is missing: the lmms-eval plug-in test runs there. Create it with "
                                  "`bash scripts/setup_lmms_env.sh` (scripts/test.sh does)")
        proc = subprocess.run([str(python), "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", __file__],
                              cwd=REPO, capture_output=True, text=True, timeout=1800)
        tail = (proc.stdout[-6000:] + "\n" + proc.stderr[-3000:]).strip()
        assert proc.returncode == 0, f"the plug-in tests failed in {LMMS_VENV}:\n{tail}"
        summary = proc.stdout.strip().splitlines()[-1]
        assert "passed" in summary and "skipped" not in summary, f"not every plug-in test ran:\n{tail}"
        print(summary)

else:
    import torch

    from llava_restore.eval import model_vqa_loader
    from llava_restore.eval.answers import read_jsonl
    from llava_restore.eval.benchmarks import BENCHMARKS
    from llava_restore.eval.eval_gqa import score_gqa
    from llava_restore.eval.eval_pope import score_pope
    from llava_restore.integrations import LMMS_TASKS_DIR

    RESTORE_ARGS = "reduction=divprune,n_vis=64,restore=True"
    RESTORE_FLAGS = ["--reduction", "divprune", "--n-vis", "64", "--restore"]
    PLAYGROUND_MODEL = REPO / "playground" / "cache" / "llava-playground"
    PLAYGROUND_EVAL = REPO / "playground" / "data" / "eval"
    N_GQA, N_POPE_PER_CATEGORY = 8, 4
    TASKS = {"playground_gqa": "gqa", "playground_pope": "pope"}
    OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}

    def _lines(path: Path) -> list:
        return path.read_text().splitlines(keepends=True)

    @pytest.fixture(scope="module")
    def workdir(tmp_path_factory) -> Path:
        """A working directory whose playground/data/eval holds a subset of the playground's GQA-
        and POPE-style sets (the first questions; POPE: of each category, with their labels)."""
        if not (PLAYGROUND_EVAL / "gqa").is_dir():  # the data is git-ignored: build it (deterministic)
            from llava_restore.playground.data import build

            build(str(REPO / "playground" / "data"), progress=False)
        root = tmp_path_factory.mktemp("lmms_cwd")
        gqa, pope = BENCHMARKS["gqa"], BENCHMARKS["pope"]
        src, dst = PLAYGROUND_EVAL / gqa.folder, root / "playground" / "data" / "eval" / gqa.folder
        (dst / "data").mkdir(parents=True)
        lines = _lines(src / gqa.question_file)[:N_GQA]
        (dst / gqa.question_file).write_text("".join(lines))
        ids = [json.loads(x)["question_id"] for x in lines]
        questions = json.loads((src / "data" / "testdev_balanced_questions.json").read_text())
        (dst / "data" / "testdev_balanced_questions.json").write_text(json.dumps({q: questions[q] for q in ids}))
        (dst / gqa.image_folder).symlink_to(src / gqa.image_folder)
        src, dst = PLAYGROUND_EVAL / pope.folder, root / "playground" / "data" / "eval" / pope.folder
        (dst / "coco").mkdir(parents=True)
        kept, per_cat = [], {}
        for line in _lines(src / pope.question_file):
            cat = json.loads(line)["category"]
            per_cat[cat] = per_cat.get(cat, 0) + 1
            if per_cat[cat] <= N_POPE_PER_CATEGORY:
                kept.append(line)
        (dst / pope.question_file).write_text("".join(kept))
        for cat in per_cat:
            name = f"coco_pope_{cat}.json"
            (dst / "coco" / name).write_text("".join(_lines(src / "coco" / name)[:N_POPE_PER_CATEGORY]))
        (dst / pope.image_folder).symlink_to(src / pope.image_folder)
        assert len(per_cat) == 3 and len(kept) == 3 * N_POPE_PER_CATEGORY
        return root

    @pytest.fixture(scope="module")
    def tiny_model(tmp_path_factory) -> Path:
        """The tiny model at the init where the reduction visibly changes the answers (helpers.py)."""
        from helpers import sensitive_tiny

        from llava_restore.model.builder import save_pretrained

        out = tmp_path_factory.mktemp("tiny_lmms")
        tok, model, proc = sensitive_tiny(seed=0)
        save_pretrained(model, str(out), tokenizer=tok, image_processor=proc, fmt="liuhaotian")
        return out

    def bench_files(workdir: Path, bench: str) -> dict:
        b = BENCHMARKS[bench]
        d = workdir / "playground" / "data" / "eval" / b.folder
        return {"dir": d, "questions": d / b.question_file, "images": d / b.image_folder}

    def loader_answers(workdir: Path, model: Path, bench: str, out: Path, flags=RESTORE_FLAGS) -> Path:
        f = bench_files(workdir, bench)
        model_vqa_loader.main(["--model-path", str(model), "--question-file", str(f["questions"]), "--image-folder",
                               str(f["images"]), "--answers-file", str(out), "--device", "cpu", "--no-progress",
                               *flags])
        return out

    def our_scores(workdir: Path, bench: str, answers: Path) -> dict:
        f = bench_files(workdir, bench)
        if bench == "gqa":
            questions = f["dir"] / "data" / "testdev_balanced_questions.json"
            return {"gqa_accuracy": score_gqa(answers, questions)["accuracy"]}
        m = score_pope(answers, f["questions"], f["dir"] / "coco")
        return {"pope_f1": m["mean_f1"], "pope_acc": m["mean_acc"]}

    def run_lmms_eval(workdir: Path, model_args: str, out: Path, batch_size: int = 1,
                      tasks: str = ",".join(TASKS)) -> subprocess.CompletedProcess:
        env = {**os.environ, **OFFLINE, "HF_DATASETS_CACHE": str(out / "hf_datasets")}
        cmd = [sys.executable, "-m", "lmms_eval", "--model", "llava_restore", "--model_args", model_args,
               "--tasks", tasks, "--include_path", str(LMMS_TASKS_DIR), "--batch_size", str(batch_size),
               "--log_samples", "--output_path", str(out)]
        return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)

    def lmms_outputs(out: Path) -> tuple:
        """(results {task: {metric: value}}, answers {task: {question_id: text}}) of one run."""
        (results_file,) = out.glob("*/*_results.json")
        results = json.loads(results_file.read_text())["results"]
        answers = {}
        for task in TASKS:
            (samples,) = out.glob(f"*/*_samples_{task}.jsonl")
            recs = [json.loads(x) for x in samples.read_text().splitlines()]
            metric = "gqa_accuracy" if task == "playground_gqa" else "pope_f1"
            answers[task] = {r[metric]["question_id"]: r[metric]["text"] for r in recs}
            assert all(r["filtered_resps"] in (r[metric]["text"], [r[metric]["text"]]) for r in recs)
        return results, answers

    def same_number(a, b) -> bool:
        if a is None or (isinstance(a, float) and math.isnan(a)):
            return b is None or (isinstance(b, float) and math.isnan(b))
        return b is not None and math.isclose(a, b, rel_tol=0, abs_tol=1e-9)

    @pytest.mark.parametrize("which", ["tiny", "playground"])
    def test_lmms_eval_answers_and_metrics_equal_ours(which, workdir, tiny_model, tmp_path):
        model = tiny_model if which == "tiny" else PLAYGROUND_MODEL
        assert (model / "config.json").is_file(), f"checkpoint missing: {model}"
        ours, plain = {}, {}
        for task, bench in TASKS.items():
            path = loader_answers(workdir, model, bench, tmp_path / f"{bench}.jsonl")
            ours[task] = ({r["question_id"]: r["text"] for r in read_jsonl(path)}, our_scores(workdir, bench, path))
            if which == "tiny":
                plain_path = loader_answers(workdir, model, bench, tmp_path / f"{bench}_plain.jsonl", flags=[])
                plain[task] = {r["question_id"]: r["text"] for r in read_jsonl(plain_path)}
        assert len(ours["playground_gqa"][0]) == N_GQA and len(ours["playground_pope"][0]) == 3 * N_POPE_PER_CATEGORY
        if which == "tiny":  # the reduction changes the tiny model's answers: equality below is not vacuous
            assert any(plain[t] != ours[t][0] for t in TASKS), "DivPrune-64+RESTORE answers equal the full-token ones"
        for bs in (1, 4):
            out = tmp_path / f"lmms_bs{bs}"
            proc = run_lmms_eval(workdir, f"pretrained={model},{RESTORE_ARGS},device=cpu", out, batch_size=bs)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
            results, answers = lmms_outputs(out)
            for task in TASKS:
                want_answers, want_scores = ours[task]
                assert answers[task] == want_answers, f"{task} bs={bs}: answers differ from model_vqa_loader's"
                for metric, want in want_scores.items():
                    got = results[task][f"{metric},none"]
                    assert same_number(got, want), f"{task} bs={bs}: {metric} {got} != our scorer's {want}"

    def test_bad_model_args_end_the_cli_with_one_line_naming_the_key(workdir, tiny_model, tmp_path):
        """Through lmms-eval's CLI (which prints a traceback for an Exception and goes on): exit
        status 1 and one line; the messages of every kind of bad value: the test below."""
        proc = run_lmms_eval(workdir, f"pretrained={tiny_model},n_vsi=64", tmp_path / "out", tasks="playground_gqa")
        assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: model_args: unknown key 'n_vsi'; known: ") and "n_vis" in last, last
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]

    @pytest.mark.parametrize("args,message", [
        ({"n_vsi": 64}, "unknown key 'n_vsi'; known: .*n_vis"),
        ({"n_vis": "abc"}, "n_vis='abc': "),
        ({"n_vis": 0}, "n_vis=0: .*must be >= 1"),
        ({"reduction": "divprun"}, "reduction: unknown reduction method 'divprun'; known: .*divprune"),
        ({"restore": "maybe"}, "restore='maybe': "),
        ({"split_ratio": 2.0}, r"split_ratio=2.0: .*\[0, 1\]"),
        ({"conv_template": "chatml"}, "conv_template='chatml' is not one of"),
        ({"attn_backend": "fast"}, "attn_backend='fast' is not one of"),
        ({"dtype": "float8"}, "dtype='float8' is not one of"),
        ({"allow_download": "yes"}, "allow_download='yes' must be True or False"),
        ({"batch_size": "auto"}, "batch_size='auto' is not supported"),
        ({"batch_size": 0}, "batch_size=0 must be an integer >= 1"),
        ({"pretrained": None}, "pretrained= is required"),
        ({"pretrained": "/no/such/folder"}, "pretrained='/no/such/folder': checkpoint folder not found"),
    ])
    def test_model_args_errors_name_the_key(args, message, tiny_model):
        from llava_restore.integrations.lmms_eval import LlavaRestore, ModelArgsError

        kwargs = {"pretrained": str(tiny_model), "device": "cpu", **args}
        with pytest.raises(ModelArgsError) as info:
            LlavaRestore(**{k: v for k, v in kwargs.items() if v is not None})
        text = str(info.value.code)
        assert "\n" not in text and text.startswith("error: model_args: "), text
        assert re.search(message, text), text

    def test_every_reduction_field_is_a_model_arg(tiny_model):
        from dataclasses import fields

        import yaml
        from lmms_eval.utils import simple_parse_args_string

        from llava_restore.integrations.lmms_eval import parse_model_args
        from llava_restore.reduction.config import ReductionConfig, make_reduction_config

        # a valid value for every field that differs from its default, as lmms-eval's parser hands it over
        special = {"method": "divprune", "anchor_rule": "bipartite", "distance_c": "3.0"}
        base = make_reduction_config()
        for f in fields(ReductionConfig):
            default, kind = getattr(base, f.name), str(f.type)
            if f.name in special:
                text = special[f.name]
            elif "bool" in kind:
                text = str(not default) if default is not None else "True"
            elif "List[int]" in kind:
                text = "[1,3]"
            elif "int" in kind:
                text = str(default + 1) if default is not None else "32"
            elif "float" in kind:
                text = str(default / 2) if default is not None else "0.5"
            else:  # a choice: the validation error lists the allowed values
                with pytest.raises(ValueError, match="is not one of") as info:
                    make_reduction_config({f.name: "__not_a_choice__"})
                allowed = ast.literal_eval(str(info.value).split("is not one of", 1)[1].strip())
                text = next(v for v in allowed if v != default)
            args = simple_parse_args_string(f"pretrained={tiny_model},method=divprune,{f.name}={text}")
            got, want = getattr(parse_model_args(args).settings.reduction, f.name), yaml.safe_load(text)
            assert got == want != default, (f.name, got, want, default)
        parsed = parse_model_args({"pretrained": str(tiny_model), "reduction": "divprune", "n_vis": 64,
                                   "restore": True})
        assert parsed.settings.reduction == make_reduction_config(method="divprune", n_vis=64, restore=True).resolve()
        assert parse_model_args({"pretrained": str(tiny_model), "attn_backend": "eager"}).settings.reduction is None

    def test_loglikelihood_equals_cached_decoding_and_batches(tiny_model):
        """log p(continuation | context) against a token-by-token KV-cache decode of the same
        tokens (another code path), at bs=1 and bs=3; is_greedy True exactly for the argmax tokens."""
        from lmms_eval.api.instance import Instance
        from PIL import Image

        from llava_restore.integrations.lmms_eval import LlavaRestore
        from llava_restore.model.conversation import build_prompt
        from llava_restore.model.mm_utils import pad_sequences, process_images, tokenizer_image_token

        imgs = [Image.new("RGB", (96, 80), c) for c in ((200, 30, 30), (20, 160, 40), (30, 40, 220))]
        docs = [{"image": im} for im in imgs]
        conts = ["red square", "a dog", "blue"]
        ctx = "What is in the image?"

        def request(cont: str, doc_id: int) -> Instance:
            return Instance("loglikelihood", (ctx, cont, lambda d: [d["image"]], doc_id, "t", "test"), idx=0,
                            metadata={"task": "t", "doc_id": doc_id, "repeats": 1})

        def requests(conts_):
            return [request(c, i) for i, c in enumerate(conts_)]

        lms = {bs: LlavaRestore(pretrained=str(tiny_model), device="cpu", batch_size=bs, reduction="divprune",
                                n_vis=64, restore=True) for bs in (1, 3)}
        for lm in lms.values():
            lm.task_dict = {"t": {"test": docs}}
        got1 = lms[1].loglikelihood(requests(conts))
        got3 = lms[3].loglikelihood(requests(conts))
        torch.testing.assert_close(torch.tensor([g[0] for g in got3]), torch.tensor([g[0] for g in got1]))
        assert [g[1] for g in got3] == [g[1] for g in got1]

        bundle, cfg = lms[1].bundle, lms[1].settings.reduction
        tok, model = bundle.tokenizer, bundle.model
        question = "<image>\n" + ctx

        def reference(cont: str) -> tuple:
            ctx_ids = tokenizer_image_token(build_prompt(question, "vicuna_v1"), tok, return_tensors="pt")
            full = tokenizer_image_token(build_prompt(question, "vicuna_v1", answer=cont)[:-len("</s>")], tok,
                                         return_tensors="pt")
            assert torch.equal(full[:len(ctx_ids)], ctx_ids)
            cont_ids = full[len(ctx_ids):]
            ids, mask = pad_sequences([ctx_ids], tok.pad_token_id, side="left")
            image = process_images([docs[conts.index(cont)]["image"]], bundle.processor,
                                   model.config.image_aspect_ratio)
            with torch.inference_mode():
                out = model(ids, mask, image, reduction=cfg, use_cache=True, padding_side="left", last_logits_only=True)
                total, greedy = 0.0, True
                for t in cont_ids:
                    logp = torch.log_softmax(out.logits[0, -1].double(), -1)
                    total += float(logp[t])
                    greedy &= int(logp.argmax()) == int(t)
                    out = model(t.view(1, 1), reduction=cfg, cache=out.cache)
            return total, greedy, cont_ids

        refs = [reference(c) for c in conts]
        torch.testing.assert_close(torch.tensor([g[0] for g in got1], dtype=torch.float64),
                                   torch.tensor([r[0] for r in refs], dtype=torch.float64), rtol=1e-5, atol=1e-4)
        assert [g[1] for g in got1] == [r[1] for r in refs]

    def test_loglikelihood_is_greedy_exactly_for_the_generated_answer(workdir):
        """The playground model's own (greedy) answers to POPE-style questions: is_greedy True and a
        higher log-likelihood than the opposite answer, which is not greedy."""
        from lmms_eval.api.instance import Instance

        from llava_restore.integrations.lmms_eval import LlavaRestore
        from llava_restore.model.mm_utils import load_image

        f = bench_files(workdir, "pope")
        qs = read_jsonl(f["questions"])[:3]
        docs = [{"image": load_image(f["images"] / q["image"]), "text": q["text"]} for q in qs]
        visual = lambda d: [d["image"]]  # noqa: E731
        meta = lambda i: {"task": "t", "doc_id": i, "repeats": 1}  # noqa: E731
        lm = LlavaRestore(pretrained=str(PLAYGROUND_MODEL), device="cpu", batch_size=3, reduction="divprune", n_vis=64,
                          restore=True)
        lm.task_dict = {"t": {"test": docs}}
        gen = [Instance("generate_until", (d["text"], {"until": [], "max_new_tokens": 16}, visual, i, "t", "test"),
                        idx=0, metadata=meta(i)) for i, d in enumerate(docs)]
        answers = lm.generate_until(gen)
        assert all(a in ("Yes", "No") for a in answers), answers
        flip = {"Yes": "No", "No": "Yes"}
        reqs = [Instance("loglikelihood", (d["text"], cont, visual, i, "t", "test"), idx=0, metadata=meta(i))
                for i, d in enumerate(docs) for cont in (answers[i], flip[answers[i]])]
        scores = lm.loglikelihood(reqs)
        for i in range(len(docs)):
            (ll, greedy), (ll_flip, greedy_flip) = scores[2 * i], scores[2 * i + 1]
            assert greedy and not greedy_flip, (answers[i], scores[2 * i:2 * i + 2])
            assert ll_flip < ll < 0
