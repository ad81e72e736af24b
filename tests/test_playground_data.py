"""The playground data builder: determinism, the nine benchmark formats, answers vs scenes.

Expected values are derived here from the definitions (scene geometry, POPE's negative sampling,
MMBench's circular rotation, LLaVA's prompt formats), never taken from the builder's helpers.
"""
import base64
import csv
import hashlib
import io
import json
import re
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from llava_restore.playground import Sizes, build, corpus_texts, status, verify
from llava_restore.playground.__main__ import main as cli_main
from llava_restore.playground.render import png_bytes, render
from llava_restore.playground.scene import Scene, SceneConfig, sample_scene
from llava_restore.playground.sink import stream

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "llava15-eval"
SHORT = "Answer the question using a single word or phrase."
MC = "Answer with the option's letter from the given choices directly."
MARGIN2 = 8  # relation margin (4 px) on doubled centres


def fixture(sub: str) -> Path:
    path = FIXTURES / sub
    if not path.exists():
        pytest.skip(f"real LLaVA-1.5 eval fixtures not found at {path} (expected ../shared next to the repo)")
    return path


def jsonl(path: Path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def first_jsonl(path: Path) -> dict:
    with open(path) as f:
        return json.loads(f.readline())


def read_tsv(path: Path):
    csv.field_size_limit(1 << 30)
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return rows[0], rows[1:]


def scenes(root: Path, part: str) -> dict:
    return {r["image"]: r["scene"] for r in jsonl(root / "scenes" / f"{part}.jsonl")}


def centre2(o: dict):
    return 2 * o["x"] + o["w"], 2 * o["y"] + o["w"]


def find(scene: dict, name: str) -> dict:
    hits = [o for o in scene["objects"] if f"{o['color']} {o['shape']}" == name]
    assert len(hits) == 1, f"{name!r} should name exactly one object"
    return hits[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pg") / "data"
    build(out, seed=0, sizes=Sizes.tiny(), progress=False)
    return out


# ----------------------------------------------------------------------------- images


def test_render_is_deterministic_96px_rgb_and_glyphs_span_patches():
    cfg = SceneConfig(text_prob=1.0, motion_prob=1.0)
    a = sample_scene(stream(0, "t", 1), cfg)
    b = sample_scene(stream(0, "t", 1), cfg)
    assert a == b
    img = render(a)
    assert img.mode == "RGB" and img.size == (96, 96)
    assert png_bytes(render(a)) == png_bytes(render(b))
    assert Scene.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    # a rendered character is larger than one 4x4 patch in both directions
    t = a.texts[0]
    assert t.h > 4 and t.w / len(t.text) > 4
    # the text's pixels have the text colour, the objects' centres their colour
    from llava_restore.playground.vocab import COLORS
    px = img.load()
    assert any(px[x, y] == COLORS[t.color] for x in range(t.x, t.x + t.w) for y in range(t.y, t.y + t.h))
    from llava_restore.playground.render import FILL_PATTERNS, SHADE, _mix
    for o in a.objects:
        if o.shape != "ring":
            cx, cy = o.x + o.w // 2, o.y + o.w // 2
            dark = FILL_PATTERNS[o.shape](cx, cy)
            assert px[cx, cy] == (_mix(COLORS[o.color], (0, 0, 0), SHADE) if dark else COLORS[o.color])


def test_a_patch_inside_an_object_shows_its_shape():
    """The per-shape fill patterns: the grid-aligned 4x4 patch at the centre of a large object
    differs between every two filled shapes of the same colour and position."""
    from llava_restore.playground.scene import Obj

    patches = {}
    for shape in ("square", "circle", "triangle", "diamond", "cross"):
        scene = Scene(96, 96, "black", 0, 0, 2, (Obj(shape, "red", "large", 40, 40, 16),))
        img = render(scene)
        patches[shape] = img.crop((48, 48, 52, 52)).tobytes()  # the patch holding the centre (48, 48)
    assert len(set(patches.values())) == len(patches), "two shapes look the same inside"


def test_same_seed_same_bytes_other_seed_other_bytes(data, tmp_path):
    again = build(tmp_path / "again", seed=0, sizes=Sizes.tiny(), progress=False)
    first = json.loads((data / "manifest.json").read_text())
    assert again["files"] == first["files"]
    other = build(tmp_path / "other", seed=1, sizes=Sizes.tiny(), progress=False)
    common = sorted(set(other["files"]) & set(first["files"]))  # a few names depend on the seed
    pngs = [k for k in common if k.endswith(".png")]
    assert len(pngs) > 40 and all(first["files"][k] != other["files"][k] for k in pngs)
    for k in ("eval/gqa/llava_gqa_testdev_balanced.jsonl", "train/llava_playground_train.json"):
        assert first["files"][k] != other["files"][k]


def test_manifest_lists_every_file_with_its_hash_and_verify_catches_edits(data, tmp_path):
    man = json.loads((data / "manifest.json").read_text())
    assert man["seed"] == 0 and man["sizes"] == Sizes.tiny().to_dict() and man["builder_version"]
    on_disk = {p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == set(man["files"])
    for rel, digest in man["files"].items():
        assert hashlib.sha256((data / rel).read_bytes()).hexdigest() == digest
    assert verify(data) == []
    assert status(data, 0, Sizes.tiny()) == (True, "up to date")
    ok, reason = status(data, 1, Sizes.tiny())
    assert not ok and "seed" in reason
    # a tampered copy is detected
    copy = tmp_path / "copy"
    build(copy, seed=0, sizes=Sizes.tiny(), progress=False)
    (copy / "eval/pope/llava_pope_test.jsonl").write_text("tampered\n")
    (copy / "eval/gqa/data/images/n000000.png").unlink()
    problems = verify(copy)
    assert "modified: eval/pope/llava_pope_test.jsonl" in problems
    assert "missing: eval/gqa/data/images/n000000.png" in problems


def test_bad_sizes_are_named():
    with pytest.raises(KeyError, match="gqa_imgs"):
        Sizes.from_dict({"gqa_imgs": 3})
    with pytest.raises(ValueError, match="pope_images"):
        Sizes.from_dict({"pope_images": -1})


def test_eval_images_disjoint_from_training_images(data):
    def digests(paths):
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}

    train = digests((data / "images" / "train").glob("*.png"))
    evals = digests((data / "eval").rglob("*.png"))
    assert len(train) == Sizes.tiny().train_images and evals
    assert not train & evals


# ----------------------------------------------------------------------------- training data


def test_training_json_is_llava_conversation_format(data):
    recs = json.loads((data / "train/llava_playground_train.json").read_text())
    assert isinstance(recs, list) and recs
    assert len({r["id"] for r in recs}) == len(recs)
    n_qa = 0
    for r in recs:
        assert set(r) <= {"id", "image", "conversations"}
        conv = r["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and len(conv) % 2 == 0
        for j, t in enumerate(conv[::2]):
            v = t["value"]
            assert v.startswith("<image>\n") == ("image" in r and j == 0)
            assert v.count("<image>") == (1 if "image" in r and j == 0 else 0)
            body = v.replace("<image>\n", "")
            assert (body.endswith("\n" + SHORT) or body.endswith("\n" + MC)
                    or body == "Describe the image briefly." or re.fullmatch(r"what is (written|the number) in .*\?", body)), body
        if "image" in r:
            assert (data / r["image"]).is_file()
        n_qa += len(conv) // 2
    man = json.loads((data / "manifest.json").read_text())
    assert man["counts"]["train_qa"] == n_qa and man["counts"]["train_records"] == len(recs)


def test_training_counts_match_scenes(data):
    """Every 'How many <plural> are there?' / 'Is there a [<c>] <s> in the image?' training turn
    agrees with the scene it was asked about."""
    sc = scenes(data, "train")
    plural = {"squares": "square", "circles": "circle", "triangles": "triangle", "diamonds": "diamond",
              "crosses": "cross", "rings": "ring", "stars": "star", "hexagons": "hexagon",
              "pentagons": "pentagon", "arrows": "arrow"}
    checked = 0
    for r in json.loads((data / "train/llava_playground_train.json").read_text()):
        if "image" not in r:
            continue
        scene = sc[r["image"]]
        conv = r["conversations"]
        for h, g in zip(conv[::2], conv[1::2]):
            q = h["value"].replace("<image>\n", "").split("\n")[0]
            m = re.fullmatch(r"How many (\w+) are there\?", q)
            if m and m.group(1) in plural:
                assert g["value"] == str(sum(o["shape"] == plural[m.group(1)] for o in scene["objects"]))
                checked += 1
            m = re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?", q)
            if m:
                present = any(o["color"] == m.group(1) and o["shape"] == m.group(2) for o in scene["objects"])
                assert g["value"] == ("Yes" if present else "No")
                checked += 1
            m = re.fullmatch(r"Is there an? (\w+) in the image\?", q)  # one category (POPE-style)
            if m:
                present = any(o["shape"] == m.group(1) for o in scene["objects"])
                assert g["value"].lower() == ("yes" if present else "no")
                checked += 1
    assert checked > 0


# ----------------------------------------------------------------------------- eval formats


def test_gqa_files_parse_and_agree(data):
    rows = jsonl(data / "eval/gqa/llava_gqa_testdev_balanced.jsonl")
    gt = json.loads((data / "eval/gqa/data/testdev_balanced_questions.json").read_text())
    assert len(rows) == Sizes.tiny().gqa_images * Sizes.tiny().gqa_per_image
    assert [r["question_id"] for r in rows] == list(gt)
    for r in rows:
        assert isinstance(r["question_id"], str) and r["category"] == "default"
        q, suffix = r["text"].split("\n")
        assert suffix == SHORT
        g = gt[r["question_id"]]
        assert g["question"] == q and g["imageId"] + ".png" == r["image"] and g["isBalanced"] is True
        assert g["answer"] == g["answer"].lower().rstrip(".")  # LLaVA's converter lower-cases predictions
        assert {"structural", "semantic", "detailed"} <= set(g["types"]) and {"global", "local"} <= set(g["groups"])
        assert all({"operation", "argument", "dependencies"} <= set(s) for s in g["semantic"])
        assert (data / "eval/gqa/data/images" / r["image"]).is_file()


def test_gqa_answers_follow_from_the_scene(data):
    """Each GQA-style kind (one object, named by its shape or colour) answered from the scene's ground truth."""
    sc = scenes(data, "gqa")
    gt = json.loads((data / "eval/gqa/data/testdev_balanced_questions.json").read_text())
    checked = Counter()
    for g in gt.values():
        scene, q, a = sc[g["imageId"] + ".png"], g["question"], g["answer"]
        by_shape = lambda shape: [o for o in scene["objects"] if o["shape"] == shape]  # noqa: E731
        m = re.fullmatch(r"What color is the (\w+)\?", q)
        if m:
            hits = by_shape(m.group(1))
            assert len(hits) == 1 and a == hits[0]["color"]
            checked["color"] += 1
        m = re.fullmatch(r"What shape is the (\w+) object\?", q)
        if m:
            hits = [o for o in scene["objects"] if o["color"] == m.group(1)]
            assert len(hits) == 1 and a == hits[0]["shape"]
            checked["shape"] += 1
        m = re.fullmatch(r"Is the (\w+) (small or large|large or small)\?", q)
        if m:
            (o,) = by_shape(m.group(1))
            assert a == o["size"]
            checked["size"] += 1
        m = re.fullmatch(r"Is the (\w+) (?:on|at) the (left|right|top|bottom) or (?:on|at) the (left|right|top|bottom) of the image\?", q)
        if m:
            (o,) = by_shape(m.group(1))
            cx2, cy2 = centre2(o)
            c2, full = (cx2, scene["width"]) if m.group(2) in ("left", "right") else (cy2, scene["height"])
            assert abs(c2 - full) > MARGIN2  # never asked about an object near the middle line
            want = {"left": c2 < full, "right": c2 > full, "top": c2 < full, "bottom": c2 > full}
            assert a in (m.group(2), m.group(3)) and want[a]
            checked["position"] += 1
        m = re.fullmatch(r"Is there an? (\w+) in the image\?", q)
        if m:
            assert a == ("yes" if by_shape(m.group(1)) else "no")
            checked["exist"] += 1
    assert sum(checked.values()) == len(gt), checked  # every question is of one of these kinds


def test_pope_files_parse_and_have_three_balanced_categories(data):
    rows = jsonl(data / "eval/pope/llava_pope_test.jsonl")
    n = Sizes.tiny().pope_images * 6
    cats = [r["category"] for r in rows]
    assert cats == ["adversarial"] * n + ["random"] * n + ["popular"] * n
    assert len({r["question_id"] for r in rows}) == len(rows)
    files = sorted(p.name for p in (data / "eval/pope/coco").iterdir())
    assert files == ["coco_pope_adversarial.json", "coco_pope_popular.json", "coco_pope_random.json"]
    for cat in ("adversarial", "popular", "random"):
        labels = jsonl(data / f"eval/pope/coco/coco_pope_{cat}.json")
        assert [x["label"] for x in labels] == ["yes", "no"] * (n // 2)  # POPE alternates yes / no
        mine = [r for r in rows if r["category"] == cat]
        assert [x["question_id"] for x in labels] == list(range(1, n + 1))
        # eval_pope.py zips answers and labels by position within a category
        for r, x in zip(mine, labels):
            assert r["text"] == x["text"] + "\n" + SHORT and r["image"] == x["image"]
            assert (data / "eval/pope/val2014" / r["image"]).is_file()


def test_pope_negatives_follow_pope_definitions(data):
    sc = scenes(data, "pope")
    names = lambda s: [o["shape"] for o in s["objects"]]  # noqa: E731  (a category is a shape)
    freq = Counter(c for s in sc.values() for c in names(s))
    co = Counter((a, b) for s in sc.values() for a in names(s) for b in names(s) if a != b)
    everything = sorted({"square", "circle", "triangle", "diamond", "cross", "ring", "star", "hexagon", "pentagon",
                         "arrow"})
    for cat in ("adversarial", "popular", "random"):
        by_image = {}
        for x in jsonl(data / f"eval/pope/coco/coco_pope_{cat}.json"):
            obj = re.fullmatch(r"Is there an? (\w+) in the image\?", x["text"]).group(1)
            by_image.setdefault(x["image"], []).append((obj, x["label"]))
        for image, qs in by_image.items():
            present = names(sc[image])
            pos = [o for o, lab in qs if lab == "yes"]
            neg = [o for o, lab in qs if lab == "no"]
            assert len(pos) == len(neg) == 3 and set(pos) <= set(present) and not set(neg) & set(present)
            absent = [c for c in everything if c not in present]
            if cat == "popular":
                assert neg == sorted(absent, key=lambda c: (-freq[c], c))[:3]
            if cat == "adversarial":
                score = {c: sum(co[(g, c)] for g in present) for c in absent}
                assert neg == sorted(absent, key=lambda c: (-score[c], c))[:3]


def test_mme_files_parse_and_llava_conversion_finds_every_ground_truth(data):
    rel = data / "eval/MME/MME_Benchmark_release_version"
    gt = {}
    for txt in rel.rglob("*.txt"):
        lines = txt.read_text().splitlines()
        assert [ln.split("\t")[1] for ln in lines] == ["Yes", "No"]
        for ln in lines:
            q, a = ln.split("\t")
            assert q.endswith(" Please answer yes or no.")
            gt[(txt.parent.name, txt.name, q)] = a
    rows = jsonl(data / "eval/MME/llava_mme.jsonl")
    assert len(rows) == 2 * len(list(rel.rglob("*.png")))
    for r in rows:
        assert r["question_id"] == r["image"] and r["category"] == r["image"].split("/")[0]
        assert (rel / r["image"]).is_file()
        # LLaVA's convert_answer_to_mme.py: drop the short-answer line, add MME's yes/no line
        prompt = r["text"].replace(SHORT, "").strip() + " Please answer yes or no."
        key = (r["category"], r["image"].split("/")[-1].split(".")[0] + ".txt", prompt)
        assert key in gt
    results = data / "eval/MME/eval_tool/Your_Results"
    for task_file in results.iterdir():
        for ln in task_file.read_text().splitlines():
            name, q, a = ln.split("\t")
            assert gt[(task_file.stem, name.replace(".png", ".txt"), q)] == a


def test_mme_count_questions_match_the_scene(data):
    sc = scenes(data, "mme")
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    for txt in (data / "eval/MME/MME_Benchmark_release_version/count").glob("*.txt"):
        scene = sc[f"count/{txt.stem}.png"]
        for ln in txt.read_text().splitlines():
            q, a = ln.split("\t")
            m = re.match(r"Is there only one (\w+) in the image\?", q)
            if m:
                n, shape = 1, m.group(1)
            else:
                m = re.match(r"Are there a total of (\w+) (\w+?)(?:es|s) in the image\?", q)
                n, shape = words.index(m.group(1)), m.group(2)
            actual = sum(o["shape"] == shape for o in scene["objects"])
            assert (actual == n) == (a == "Yes")


def test_mmbench_tsv_and_circular_copies(data):
    header, rows = read_tsv(data / "eval/mmbench/mmbench_dev_20230712.tsv")
    assert header == ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "source",
                      "l2-category", "comment", "split", "image"]
    col = {name: i for i, name in enumerate(header)}
    by_index = {int(r[col["index"]]): r for r in rows}
    assert len(by_index) == len(rows)
    bases = [i for i in by_index if i < 1000000]
    assert len(bases) == Sizes.tiny().mmbench_questions
    for i in bases:
        base = by_index[i]
        opts = [base[col[c]] for c in "ABCD" if base[col[c]]]
        n = len(opts)
        assert 2 <= n <= 4 and all(base[col[c]] == "" for c in "ABCD"[n:])
        ans = "ABCD".index(base[col["answer"]])
        Image.open(io.BytesIO(base64.b64decode(base[col["image"]]))).verify()
        copies = [k for k in range(1, 5) if i + k * 1000000 in by_index]
        assert copies == list(range(1, n))
        for k in copies:
            row = by_index[i + k * 1000000]
            rotated = [row[col[c]] for c in "ABCD"[:n]]
            assert rotated == [opts[(j - k) % n] for j in range(n)]
            assert row[col["answer"]] == "ABCD"[(ans + k) % n]
            assert rotated["ABCD".index(row[col["answer"]])] == opts[ans]
            assert row[col["image"]] == base[col["image"]] and row[col["question"]] == base[col["question"]]


def test_scienceqa_files_parse(data):
    recs = json.loads((data / "eval/scienceqa/llava_test_CQM-A.json").read_text())
    problems = json.loads((data / "eval/scienceqa/problems.json").read_text())
    splits = json.loads((data / "eval/scienceqa/pid_splits.json").read_text())
    assert splits["test"] == [r["id"] for r in recs] == list(problems)
    for r in recs:
        p = problems[r["id"]]
        human, gpt = r["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        lines = human["value"].split("\n")
        opts = [ln for ln in lines if re.match(r"[A-E]\. ", ln)]
        assert [o[3:] for o in opts] == p["choices"] and gpt["value"] == "ABCDE"[p["answer"]]
        assert ("image" in r) == (p["image"] is not None) == lines[0].startswith("<image>")
        if "image" in r:
            assert r["image"] == f"{r['id']}/image.png"
            assert (data / "eval/scienceqa/images/test" / r["image"]).is_file()
        if p["hint"]:
            assert f"Context: {p['hint']}" in lines


def test_seed_files_parse(data):
    rows = jsonl(data / "eval/seed_bench/llava-seed-bench.jsonl")
    ann = json.loads((data / "eval/seed_bench/SEED-Bench.json").read_text())
    qs = {q["question_id"]: q for q in ann["questions"]}
    assert len(rows) == len(qs) == Sizes.tiny().seed_questions + Sizes.tiny().seed_video_questions
    for r in rows:
        q = qs[str(r["question_id"])]
        # image questions have int ids in LLaVA's file, video ones "v<k>"
        assert isinstance(r["question_id"], int) == (q["data_type"] == "image")
        assert r["category"] in ann["question_type"] and ann["question_type"][r["category"]] == q["question_type_id"]
        lines = r["text"].split("\n")
        assert lines[-1] == MC and lines[0] == q["question"]
        assert lines[1:5] == [f"{c}. {q['choice_' + c.lower()]}" for c in "ABCD"]
        assert q["answer"] in "ABCD" and (data / "eval/seed_bench" / r["image"]).is_file()
    assert {q["data_type"] for q in qs.values()} == {"image", "video"}


def test_textvqa_files_parse_and_match_like_eval_textvqa(data):
    rows = jsonl(data / "eval/textvqa/llava_textvqa_val_v051_ocr.jsonl")
    ann = json.loads((data / "eval/textvqa/TextVQA_0.5.1_val.json").read_text())
    keyed = {(a["image_id"], a["question"].lower()): a for a in ann["data"]}
    assert len(keyed) == len(ann["data"]) == len(rows)
    for r in rows:
        lines = r["text"].split("\n")
        assert len(lines) == 3 and lines[1].startswith("Reference OCR token: ") and lines[2] == SHORT
        a = keyed[(r["question_id"], lines[0].lower())]  # eval_textvqa.py's lookup
        assert len(a["answers"]) == 10 and r["image"] == r["question_id"] + ".png"
        assert (data / "eval/textvqa/train_images" / r["image"]).is_file()


def test_vqav2_files_parse_and_counts_match_the_scene(data):
    dev = jsonl(data / "eval/vqav2/llava_vqav2_mscoco_test-dev2015.jsonl")
    full = jsonl(data / "eval/vqav2/llava_vqav2_mscoco_test2015.jsonl")
    ann = json.loads((data / "eval/vqav2/v2_mscoco_test-dev2015_annotations.json").read_text())
    qs = json.loads((data / "eval/vqav2/v2_OpenEnded_mscoco_test-dev2015_questions.json").read_text())
    assert {r["question_id"] for r in dev} < {r["question_id"] for r in full}
    assert [q["question_id"] for q in qs["questions"]] == [a["question_id"] for a in ann["annotations"]] == [r["question_id"] for r in dev]
    sc = scenes(data, "vqav2")
    plural = {"squares": "square", "circles": "circle", "triangles": "triangle", "diamonds": "diamond",
              "crosses": "cross", "rings": "ring", "stars": "star", "hexagons": "hexagon",
              "pentagons": "pentagon", "arrows": "arrow"}
    for r, q, a in zip(dev, qs["questions"], ann["annotations"]):
        assert r["question_id"] // 1000 == q["image_id"] == a["image_id"]
        assert r["text"] == q["question"] + "\n" + SHORT and len(a["answers"]) == 10
        assert a["answer_type"] in ("yes/no", "number", "other")
        assert (data / "eval/vqav2/test2015" / r["image"]).is_file()
        scene = sc[r["image"]]
        m = re.fullmatch(r"How many (\w+) are there\?", q["question"])
        if m and m.group(1) in plural:
            true = str(sum(o["shape"] == plural[m.group(1)] for o in scene["objects"]))
            assert Counter(x["answer"] for x in a["answers"]).most_common(1)[0][0] == true


def test_ocrbench_file_parses(data):
    items = json.loads((data / "eval/ocrbench/OCRBench/OCRBench.json").read_text())
    assert len(items) == Sizes.tiny().ocrbench_questions
    sc = scenes(data, "ocrbench")
    for it in items:
        assert set(it) == {"dataset_name", "id", "image_path", "question", "answers", "type"}
        assert (data / "eval/ocrbench/OCRBench_Images" / it["image_path"]).is_file()
        texts = [t["text"] for t in sc[it["image_path"]]["texts"]]
        assert isinstance(it["answers"], list) and it["answers"][0] in texts


# ----------------------------------------------------------------------------- vs the real files


def test_question_files_have_the_real_fields_and_prompt_lines(data):
    real = fixture("")
    pairs = {
        "gqa/llava_gqa_testdev_balanced.jsonl": "eval/gqa/llava_gqa_testdev_balanced.jsonl",
        "pope/llava_pope_test.jsonl": "eval/pope/llava_pope_test.jsonl",
        "mme/llava_mme.jsonl": "eval/MME/llava_mme.jsonl",
        "textvqa/llava_textvqa_val_v051_ocr.jsonl": "eval/textvqa/llava_textvqa_val_v051_ocr.jsonl",
    }
    for theirs, ours in pairs.items():
        a, b = first_jsonl(real / theirs), first_jsonl(data / ours)
        assert list(a) == list(b), ours
        assert {k: type(v) for k, v in a.items()} == {k: type(v) for k, v in b.items()}, ours
        assert a["text"].split("\n")[-1] == b["text"].split("\n")[-1], ours
    tv_real, tv_ours = (first_jsonl(real / "textvqa/llava_textvqa_val_v051_ocr.jsonl")["text"].split("\n"),
                        first_jsonl(data / "eval/textvqa/llava_textvqa_val_v051_ocr.jsonl")["text"].split("\n"))
    assert len(tv_real) == len(tv_ours) and tv_real[1].split(": ")[0] == tv_ours[1].split(": ")[0]
    # POPE label files and the id layout of the question file
    lab_real = first_jsonl(real / "pope/coco/coco_pope_random.json")
    assert list(lab_real) == list(first_jsonl(data / "eval/pope/coco/coco_pope_random.json"))
    first_id = lambda rows: {r["category"]: r["question_id"] for r in reversed(rows)}  # noqa: E731
    assert first_id(jsonl(real / "pope/llava_pope_test.jsonl")) == first_id(jsonl(data / "eval/pope/llava_pope_test.jsonl"))


def test_mme_ground_truth_lines_look_like_the_real_ones(data):
    real = fixture("mme/ground_truth/count")
    theirs = next(real.glob("*.txt")).read_text().splitlines()
    ours = next((data / "eval/MME/MME_Benchmark_release_version/count").glob("*.txt")).read_text().splitlines()
    pattern = re.compile(r"[^\t]+ Please answer yes or no\.\t(Yes|No)")
    assert all(pattern.fullmatch(ln) for ln in theirs) and all(pattern.fullmatch(ln) for ln in ours)


def test_mmbench_header_matches_the_real_tsv(data):
    theirs, _ = read_tsv(fixture("mmbench/mmbench_dev_20230712.tsv"))
    ours, _ = read_tsv(data / "eval/mmbench/mmbench_dev_20230712.tsv")
    assert ours == theirs


def test_scienceqa_matches_the_real_files(data):
    real = fixture("scienceqa")
    r_recs = json.loads((real / "llava_test_CQM-A.json").read_text())
    o_recs = json.loads((data / "eval/scienceqa/llava_test_CQM-A.json").read_text())
    assert {tuple(r) for r in r_recs} == {tuple(r) for r in o_recs}  # ('id', 'image', 'conversations') / no image
    assert set(json.loads((real / "pid_splits.json").read_text())) == set(
        json.loads((data / "eval/scienceqa/pid_splits.json").read_text()))
    with_ctx = next(r for r in r_recs if "image" in r and "\nContext: " in "\n" + r["conversations"][0]["value"])
    assert with_ctx["conversations"][0]["value"].startswith("<image>\nContext: ")


def test_seed_ids_look_like_the_real_submission(data):
    real = jsonl(fixture("seed_bench/upload-llava-v1.5-13b.jsonl"))
    ours = json.loads((data / "eval/seed_bench/SEED-Bench.json").read_text())["questions"]
    kind = lambda qid: "video" if qid.startswith("v") else ("image" if qid.isdigit() else "other")  # noqa: E731
    assert {kind(r["question_id"]) for r in real} == {kind(q["question_id"]) for q in ours} == {"image", "video"}
    assert all(kind(q["question_id"]) == q["data_type"] for q in ours)


# ----------------------------------------------------------------------------- corpus and CLI


def test_corpus_texts_cover_prompts_and_answers(data):
    texts = corpus_texts(data)
    joined = "\n".join(texts)
    assert SHORT in joined and MC in joined and "Reference OCR token:" in joined
    assert "<image>" not in joined
    recs = json.loads((data / "train/llava_playground_train.json").read_text())
    answers = {t["value"] for r in recs for t in r["conversations"][1::2]}
    assert answers <= set(texts)


def test_cli_build_and_lazy_train_dispatch(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    assert cli_main(["build", "--out", str(out), "--tiny", "--no-progress", "--gqa-images", "2"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["sizes"]["gqa_images"] == 2 and man["counts"]["gqa"] == 2 * Sizes.tiny().gqa_per_image
    assert cli_main(["build", "--out", str(out), "--tiny", "--gqa-images", "2", "--verify"]) == 0
    assert "up to date" in capsys.readouterr().out
    seen = []
    fake = types.ModuleType("llava_restore.playground.train")
    fake.main = lambda argv: seen.append(argv)
    monkeypatch.setitem(sys.modules, "llava_restore.playground.train", fake)
    assert cli_main(["train", "--steps", "3"]) == 0 and seen == [["--steps", "3"]]
    assert cli_main(["nonsense"]) == 2


# ----------------------------------------------------------------------------- project scorers


def _answers(path: Path, rows) -> str:
    with open(path, "w") as f:
        for qid, prompt, text, extra in rows:
            f.write(json.dumps({"question_id": qid, "prompt": prompt, "text": text, "answer_id": "gt",
                                "model_id": "gt", "metadata": {}, **extra}) + "\n")
    return str(path)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_project_scorers_read_every_benchmark_and_score_ground_truth_at_100(data, tmp_path, capsys):
    """Answer files holding the ground truth (read from the GT files, as a model would say it)
    are scored at 100 by the project's LLaVA-compatible scorer CLIs."""
    import importlib

    E = data / "eval"
    score = lambda name, argv: importlib.import_module(f"llava_restore.eval.eval_{name}").main(argv)  # noqa: E731

    gt = json.loads((E / "gqa/data/testdev_balanced_questions.json").read_text())
    rows = [(r["question_id"], r["text"], gt[r["question_id"]]["answer"].capitalize() + ".", {})
            for r in jsonl(E / "gqa/llava_gqa_testdev_balanced.jsonl")]
    m = score("gqa", ["--result-file", _answers(tmp_path / "gqa.jsonl", rows),
                      "--questions", str(E / "gqa/data/testdev_balanced_questions.json")])
    assert m["accuracy"] == 100.0

    q = jsonl(E / "pope/llava_pope_test.jsonl")
    labels = {}
    for cat in ("adversarial", "popular", "random"):
        for r, x in zip([r for r in q if r["category"] == cat], jsonl(E / f"pope/coco/coco_pope_{cat}.json")):
            labels[r["question_id"]] = x["label"].capitalize()
    m = score("pope", ["--annotation-dir", str(E / "pope/coco"), "--question-file", str(E / "pope/llava_pope_test.jsonl"),
                       "--result-file", _answers(tmp_path / "pope.jsonl", [(r["question_id"], r["text"], labels[r["question_id"]], {}) for r in q])])
    assert m["mean_f1"] == 100.0

    rows = []
    for r in jsonl(E / "MME/llava_mme.jsonl"):
        txt = (E / "MME/MME_Benchmark_release_version" / r["image"]).with_suffix(".txt")
        truth = dict(ln.split("\t") for ln in txt.read_text().splitlines())
        rows.append((r["question_id"], r["text"], truth[r["text"].split("\n")[0] + " Please answer yes or no."], {}))
    m = score("mme", ["--question-file", str(E / "MME/llava_mme.jsonl"), "--result-file", _answers(tmp_path / "mme.jsonl", rows),
                      "--gt-dir", str(E / "MME/MME_Benchmark_release_version")])
    assert {t: v["score"] for t, v in m["subtasks"].items() if v["n"]} == {
        t: 200.0 for t in ("existence", "count", "position", "color", "OCR", "numerical_calculation")}

    header, tsv = read_tsv(E / "mmbench/mmbench_dev_20230712.tsv")
    col = {c: i for i, c in enumerate(header)}
    rows = [(int(r[col["index"]]), r[col["question"]], r[col["answer"]], {"round_id": 0}) for r in tsv]
    m = score("mmbench", ["--annotation-file", str(E / "mmbench/mmbench_dev_20230712.tsv"),
                          "--result-file", _answers(tmp_path / "mmbench.jsonl", rows)])
    assert m["circular_accuracy"] == 100.0

    items = json.loads((E / "ocrbench/OCRBench/OCRBench.json").read_text())
    m = score("ocrbench", ["--question-file", str(E / "ocrbench/OCRBench/OCRBench.json"),
                           "--result-file", _answers(tmp_path / "ocr.jsonl", [(it["id"], it["question"], it["answers"][0], {}) for it in items])])
    assert m["final_score"] == len(items)

    recs = json.loads((E / "scienceqa/llava_test_CQM-A.json").read_text())
    rows = [(r["id"], r["conversations"][0]["value"], r["conversations"][1]["value"], {}) for r in recs]
    m = score("science_qa", ["--base-dir", str(E / "scienceqa"), "--result-file", _answers(tmp_path / "sqa.jsonl", rows)])
    assert m["accuracy"] == 100.0 and m["img_accuracy"] == 100.0

    ann = {x["question_id"]: x for x in json.loads((E / "seed_bench/SEED-Bench.json").read_text())["questions"]}
    rows = [(r["question_id"], r["text"], ann[str(r["question_id"])]["answer"], {})
            for r in jsonl(E / "seed_bench/llava-seed-bench.jsonl")]
    m = score("seed", ["--annotation-file", str(E / "seed_bench/SEED-Bench.json"),
                       "--result-file", _answers(tmp_path / "seed.jsonl", rows)])
    assert m["image_accuracy"] == 100.0 and m["video_accuracy"] == 100.0

    tv = {(d["image_id"], d["question"]): d["answers"] for d in json.loads((E / "textvqa/TextVQA_0.5.1_val.json").read_text())["data"]}
    rows = [(r["question_id"], r["text"], Counter(tv[(r["question_id"], r["text"].split("\n")[0].lower())]).most_common(1)[0][0].upper(), {})
            for r in jsonl(E / "textvqa/llava_textvqa_val_v051_ocr.jsonl")]
    m = score("textvqa", ["--annotation-file", str(E / "textvqa/TextVQA_0.5.1_val.json"),
                          "--result-file", _answers(tmp_path / "textvqa.jsonl", rows)])
    assert m["accuracy"] == 100.0

    va = {a["question_id"]: a["multiple_choice_answer"] for a in json.loads((E / "vqav2/v2_mscoco_test-dev2015_annotations.json").read_text())["annotations"]}
    rows = [(r["question_id"], r["text"], va[r["question_id"]].capitalize(), {}) for r in jsonl(E / "vqav2/llava_vqav2_mscoco_test-dev2015.jsonl")]
    m = score("vqav2", ["--question-file", str(E / "vqav2/llava_vqav2_mscoco_test2015.jsonl"),
                        "--result-file", _answers(tmp_path / "vqav2.jsonl", rows),
                        "--annotation-file", str(E / "vqav2/v2_mscoco_test-dev2015_annotations.json"),
                        "--output-file", str(tmp_path / "vqav2_upload.json")])
    assert m["accuracy"] == 100.0
    capsys.readouterr()
