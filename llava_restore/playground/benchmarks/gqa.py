"""GQA (testdev-balanced style).

Files, as LLaVA's scripts/v1_5/eval/gqa.sh and GQA's eval.py expect them:
- ``eval/gqa/llava_gqa_testdev_balanced.jsonl``: {question_id (str), image, text, category}
- ``eval/gqa/data/images/<imageId>.png``
- ``eval/gqa/data/testdev_balanced_questions.json``: {qid: {question, answer, fullAnswer, imageId,
  isBalanced, types, semantic, semanticStr, groups, entailed, equivalent, annotations}}
- ``eval/gqa/data/testdev_balanced_choices.json``: {qid: {valid, plausible}}
- ``eval/gqa/data/testdev_balanced_sceneGraphs.json``: {imageId: {width, height, objects}}
"""
from __future__ import annotations

from llava_restore.playground import config, vocab
from llava_restore.playground.benchmarks.common import EVAL, short_prompt, write_scenes
from llava_restore.playground.questions import sample_questions
from llava_restore.playground.scene import Scene, relation_holds, sample_scene
from llava_restore.playground.sink import Sink, stream

ROOT = f"{EVAL}/gqa"
QID_BASE = 201300000

# No counting and no text reading: GQA has neither. Every question is about one object, named by its
# shape or colour (query, verify and choose questions over attributes, position and existence):
# relations between two objects and logical/compare questions are dropped, because the from-scratch
# decoder does not learn them in the training budget (playground/README.md, "Question kinds").
KIND_WEIGHTS = {
    "color_query": 2.0, "shape_query": 1.5, "size_choose": 1.0, "position_choose": 1.5,
    "exist_object": 1.5,
}


def n_images(sizes, seed: int) -> int:
    return sizes.gqa_images


def scene_graph(scene: Scene) -> dict:
    objs = {}
    for i, o in enumerate(scene.objects):
        rels = [{"name": vocab.RELATIONS[r], "object": f"o{j}"}
                for j, p in enumerate(scene.objects) if j != i
                for r in vocab.RELATIONS if relation_holds(o, p, r)]
        objs[f"o{i}"] = {"name": o.shape, "x": o.x, "y": o.y, "w": o.w, "h": o.w,
                         "attributes": [o.color, o.size], "relations": rels}
    return {"width": scene.width, "height": scene.height, "objects": objs}


def _semantic(program):
    return [{"operation": op, "dependencies": list(deps), "argument": arg} for op, arg, deps in program]


def _semantic_str(program) -> str:
    steps = []
    for op, arg, deps in program:
        dep = f" [{', '.join(str(d) for d in deps)}]" if deps else ""
        steps.append(f"{op}: {arg}{dep}")
    return "->".join(steps)


def build(sink: Sink, seed: int, sizes) -> int:
    rows, questions, choices, graphs, scenes = [], {}, {}, {}, []
    for i in range(sizes.gqa_images):
        scene = sample_scene(stream(seed, "gqa", "scene", i), config.OBJECTS)
        image_id = f"n{i:06d}"
        sink.image(f"{ROOT}/data/images/{image_id}.png", scene, "eval")
        scenes.append((f"{image_id}.png", scene))
        graphs[image_id] = scene_graph(scene)
        rng = stream(seed, "gqa", "questions", i)
        for qa in sample_questions(scene, rng, KIND_WEIGHTS, sizes.gqa_per_image):
            qid = str(QID_BASE + len(rows))
            rows.append({"question_id": qid, "image": f"{image_id}.png", "text": short_prompt(qa.question),
                         "category": "default"})
            questions[qid] = {
                "semantic": _semantic(qa.program),
                "entailed": [],
                "equivalent": [qid],
                "question": qa.question,
                "imageId": image_id,
                "isBalanced": True,
                "groups": {"global": None if qa.answer_type == "yes/no" else qa.kind,
                           "local": f"{qa.structural}-{qa.kind}"},
                "answer": qa.answer,
                "semanticStr": _semantic_str(qa.program),
                "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
                "types": {"detailed": qa.kind, "semantic": qa.semantic, "structural": qa.structural},
                "fullAnswer": qa.full_answer,
            }
            choices[qid] = {"valid": list(qa.choices), "plausible": list(qa.choices)}
    sink.jsonl(f"{ROOT}/llava_gqa_testdev_balanced.jsonl", rows)
    sink.json(f"{ROOT}/data/testdev_balanced_questions.json", questions)
    sink.json(f"{ROOT}/data/testdev_balanced_choices.json", choices)
    sink.json(f"{ROOT}/data/testdev_balanced_sceneGraphs.json", graphs)
    write_scenes(sink, "gqa", scenes)
    return len(rows)
