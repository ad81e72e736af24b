"""analysis.stability: the changed-patch count against hand-worked cases, the noise reaching the
selections (a near-tie-free method stays put, VisPruner moves), and the CLI's report and errors."""
import json

import pytest
import torch

from llava_restore.analysis import stability
from llava_restore.analysis.stability import changed_patches, perturb, stability_counts
from llava_restore.reduction.config import make_reduction_config

from helpers import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_changed_patches_by_hand():
    ref = torch.tensor([[0, 0, 1, 1, -1], [0, -1, 1, 2, 2]])
    # row 0: patch 1 moves from {0, 1} to {1, 2, 3}: patches 0-3 all have another group, 4 stays dropped
    # row 1: the same partition under other ids
    new = torch.tensor([[5, 7, 7, 7, -1], [2, -1, 0, 1, 1]])
    assert changed_patches(ref, new).tolist() == [4, 0]
    # a kept token swapped for a dropped one changes both
    assert changed_patches(torch.tensor([[0, -1, 1]]), torch.tensor([[-1, 0, 1]])).tolist() == [2]
    assert changed_patches(ref, ref).tolist() == [0, 0]
    with pytest.raises(ValueError, match="member maps of shape"):
        changed_patches(ref, ref[:, :4])


def _inputs(B=2, N=576, D=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, N, D, generator=g)
    return feats, {"vis_feats": torch.randn(B, N, 16, generator=g),
                   "cls_attn": torch.rand(B, N, generator=g).softmax(-1), "grid_hw": (24, 24)}


def test_perturb_scales_every_float_input_and_keeps_attention_non_negative():
    feats, inputs = _inputs()
    p_feats, p_in = perturb(feats, inputs, 1e-3, torch.Generator().manual_seed(1))
    for a, b in [(feats, p_feats), (inputs["vis_feats"], p_in["vis_feats"]), (inputs["cls_attn"], p_in["cls_attn"])]:
        rel = (b / a - 1).abs()
        assert 0 < rel.max() < 1e-2 and rel.mean() > 1e-4  # each input moved, by about eps
    assert bool((p_in["cls_attn"] >= 0).all()) and p_in["grid_hw"] == (24, 24)
    same = perturb(feats, inputs, 1e-3, torch.Generator().manual_seed(1))[0]
    assert torch.equal(same, p_feats)  # seeded


@pytest.mark.parametrize("method", ["divprune", "vispruner", "holov"])
def test_no_noise_changes_nothing(method):
    feats, inputs = _inputs()
    for restore in (False, True):
        cfg = make_reduction_config(method=method, n_vis=64, restore=restore).resolve()
        c = stability_counts(feats, inputs, cfg, eps=0.0, trials=2, seed=0)
        assert c == {"samples": 4, "samples_changed": 0, "patches_changed": 0, "repeat_identical": True}


def test_noise_moves_vispruner_but_not_uniform():
    feats, inputs = _inputs()
    uni = make_reduction_config(method="uniform", n_vis=64).resolve()
    assert stability_counts(feats, inputs, uni, eps=1e-2, trials=2, seed=0)["samples_changed"] == 0
    vis = make_reduction_config(method="vispruner", n_vis=64).resolve()
    c = stability_counts(feats, inputs, vis, eps=1e-5, trials=2, seed=0)
    assert c["samples_changed"] > 0 and c["patches_changed"] % 2 == 0  # pure pruning: swaps come in pairs


def _question_file(tmp_path):
    from PIL import Image

    folder = tmp_path / "img"
    folder.mkdir()
    for i, rgb in enumerate([(200, 30, 30), (30, 90, 200)]):
        Image.new("RGB", (96, 96), rgb).save(folder / f"{i}.png")
    qf = tmp_path / "q.jsonl"
    qf.write_text("".join(json.dumps({"question_id": k, "image": f"{k}.png", "text": "What is it?"}) + "\n"
                          for k in range(2)))
    return ["--question-file", str(qf), "--image-folder", str(folder)]


def test_cli_report_and_resolved_configs(tiny_liuhaotian, tmp_path):
    out = tmp_path / "out"
    res = stability.main(["--model-path", tiny_liuhaotian, *_question_file(tmp_path), "--methods", "divprune",
                          "--n-vis", "64", "--samples", "2", "--eps", "0", "--trials", "1", "--out", str(out)])
    assert [r["name"] for r in res["rows"]] == ["divprune-n64", "divprune-n64-restore"]
    assert all(r["patches_changed"] == 0 and r["repeat_identical"] and r["samples"] == 2 for r in res["rows"])
    saved = json.loads((out / "stability.json").read_text())
    assert saved["rows"][1]["config"]["restore"] is True and saved["rows"][1]["config"]["merge"] is True
    assert saved["meta"]["eps"] == 0 and saved["meta"]["patches"] == 576
    assert "| divprune-n64-restore | 0.0 | 0.00 | yes |" in (out / "stability.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--methods", "fastv"], "fastv: not a pre-LLM method; known:"),
    (["--methods", "nosuch"], "nosuch: not a pre-LLM method; known:"),
    (["--eps", "-1"], "need --eps >= 0"),
    (["--n-vis", "64,abc"], "--n-vis '64,abc': expected comma-separated token counts"),
    (["--reduction-opts", "nosuch=1"], "Key 'nosuch' not in 'ReductionConfig'"),
    (["--reduction-opts", "split_ratio=7"], "split_ratio=7.0 must be in [0, 1]"),
])
def test_cli_bad_arguments_fail_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        stability.main(["--model-path", "unused", "--question-file", "q", "--image-folder", "i", *argv])
    assert message in str(err.value)


def test_cli_input_errors_name_the_file_or_value(tiny_liuhaotian, tmp_path, capsys):
    from llava_restore.eval.generate import cli_entry

    files = _question_file(tmp_path)
    for argv, message in [(["--question-file", str(tmp_path / "none.jsonl"), "--image-folder", "x"],
                           "question file not found"),
                          ([*files, "--n-vis", "700"], "n_vis=700 must be in 1..N=576")]:
        with pytest.raises(SystemExit) as err:
            cli_entry(stability.main, ["--model-path", tiny_liuhaotian, *argv, "--methods", "divprune",
                                       "--samples", "2", "--out", str(tmp_path / "o")])
        assert err.value.code == 1 and message in capsys.readouterr().err
