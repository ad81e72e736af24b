"""The trainer's select/existence warm-up: answers follow the scenes, deterministic, LLaVA format."""
from llava_restore.playground.warmup import SUFFIX, warmup_records

SCENES = {
    "a.png": {"objects": [{"shape": "ring", "color": "red", "size": "small", "x": 0, "y": 0, "w": 10},
                          {"shape": "square", "color": "blue", "size": "large", "x": 30, "y": 30, "w": 16},
                          {"shape": "ring", "color": "green", "size": "small", "x": 60, "y": 0, "w": 10}], "texts": []},
    "b.png": {"objects": [{"shape": "cross", "color": "white", "size": "large", "x": 5, "y": 5, "w": 16}], "texts": []},
    "empty.png": {"objects": [], "texts": []},
}


def _answer(scene, q):
    objs = scene["objects"]
    if q.startswith("What color is the "):
        shape = q[len("What color is the "):-1]
        (o,) = [o for o in objs if o["shape"] == shape]  # the builder asks only about unique shapes
        return o["color"]
    if q.startswith("What shape is the "):
        color = q[len("What shape is the "):-len(" object?")]
        (o,) = [o for o in objs if o["color"] == color]
        return o["shape"]
    color, shape = q[len("Is there a "):-len(" in the image?")].split()
    return "yes" if any(o["color"] == color and o["shape"] == shape for o in objs) else "no"


def test_warmup_answers_follow_the_scenes_and_are_deterministic():
    recs = warmup_records(SCENES, seed=3, per_image=6)
    assert recs == warmup_records(SCENES, seed=3, per_image=6)
    assert {r["image"] for r in recs} == {"a.png", "b.png"}  # no question about an empty scene
    kinds = set()
    for r in recs:
        human, gpt = r["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt" and human["value"].startswith("<image>\n")
        assert human["value"].endswith(SUFFIX)
        q = human["value"][len("<image>\n"):-len(SUFFIX)]
        assert gpt["value"] == _answer(SCENES[r["image"]], q).capitalize(), q
        kinds.add(q.split()[0] + ("-" + gpt["value"] if q.startswith("Is") else ""))
    assert {"What", "Is-Yes", "Is-No"} <= kinds
    # the only select question of a.png is about the unique shape (square) or a unique colour
    for r in recs:
        q = r["conversations"][0]["value"]
        assert "color is the ring" not in q
