"""The report's published column: paper_table1.yaml holds RESTORE_SPEC.md §6, a grid's ``paper``
key (or --paper) adds "paper avg rel%" and "measured - paper" beside the measured average."""
import json
import textwrap

import pytest

from llava_restore import ablate
from llava_restore.ablation.grid import GridError, load_grid
from llava_restore.ablation.paper import known_papers, load_paper
from llava_restore.ablation.runs import make_tasks


def test_table1_holds_the_spec_numbers():
    t = load_paper("table1")
    assert "table1" in known_papers()
    assert t.benchmarks == ["gqa", "mmbench", "mme", "pope", "sqa", "vqav2", "textvqa", "seed"]
    # RESTORE_SPEC.md §6, a few cells typed in by hand
    assert t.lookup("fastv", False, 64) == 75.2
    assert t.lookup("pdrop", False, 128) == 84.5
    assert t.lookup("sparsevlm", False, 192) == 98.1
    assert t.lookup("tome", False, 64) == 91.6
    assert t.lookup("visionzip", True, 128) == 97.1
    assert t.lookup("divprune", False, 64) == 93.8 and t.lookup("divprune", True, 64) == 95.9
    assert t.lookup("vispruner", True, 128) == 98.4
    assert t.lookup("holov", True, 64) == 96.5
    assert t.lookup("fastv", True, 64) is None and t.lookup("holov", True, 96) is None
    assert len(t.values) == 4 * 3 + 4 * 2 * 3


def test_unknown_paper_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"unknown paper table 'tabel1'; known: \[.*'table1'"):
        load_paper("tabel1")
    g = tmp_path / "g.yaml"
    g.write_text("axes:\n  method: [divprune]\n  n_vis: [64]\npaper: tabel1\n")
    with pytest.raises(GridError, match=r"g.yaml:4: unknown paper table 'tabel1'"):
        load_grid(g)
    bad = tmp_path / "paper_bad.yaml"
    bad.write_text("rows:\n  holov:\n    false: {sixty: 1.0}\n")
    with pytest.raises(ValueError, match=r"rows.holov.false.'sixty': tokens must be an integer"):
        load_paper("bad", tmp_path)


GRID = """
    name: pap
    paper: table1
    axes:
      method: [divprune]
      n_vis: [64]
      restore: [false, true]
    include:
      - {method: tome, n_vis: 32}
"""


def _fill(tmp_path, results):
    grid = tmp_path / "pap.yaml"
    grid.write_text(textwrap.dedent(GRID))
    out = tmp_path / "runs"
    tasks = make_tasks(load_grid(grid).runs, ["gqa", "pope"], out)
    for t in tasks:
        value = results[(t.run_index, t.benchmark)]
        t.folder.mkdir(parents=True, exist_ok=True)
        key = "accuracy" if t.benchmark == "gqa" else "mean_f1"
        (t.folder / "result.json").write_text(json.dumps({"metrics": {key: value}}))
    return grid, out


def _csv(out):
    lines = (out / "grids/pap/summary.csv").read_text().splitlines()
    rows = [line.split(",") for line in lines]
    return rows[0], rows[1:]


def test_report_shows_published_beside_measured(tmp_path):
    # runs: 0 full, 1 divprune@64, 2 divprune+RESTORE@64, 3 tome@32 (no published row)
    results = {(0, "gqa"): 80.0, (0, "pope"): 90.0, (1, "gqa"): 40.0, (1, "pope"): 81.0,
               (2, "gqa"): 76.0, (2, "pope"): 90.0, (3, "gqa"): 60.0, (3, "pope"): 45.0}
    grid, out = _fill(tmp_path, results)
    assert ablate.main([str(grid), "--benchmarks", "gqa,pope", "--out", str(out), "--report-only"]) == 0
    header, rows = _csv(out)
    i_avg, i_pub, i_diff = header.index("avg rel%"), header.index("paper avg rel%"), header.index("measured - paper")
    assert i_pub == i_avg + 1 and i_diff == i_avg + 2
    # by hand: divprune@64 = (40/80 + 81/90) / 2 = (50 + 90) / 2 = 70 -> 70 - 93.8 = -23.8
    #          +RESTORE     = (76/80 + 90/90) / 2 = (95 + 100) / 2 = 97.5 -> 97.5 - 95.9 = 1.6
    #          tome@32: the paper has no 32-token row -> blank
    assert float(rows[0][i_pub]) == 100.0 and float(rows[0][i_diff]) == pytest.approx(0.0)
    assert float(rows[1][i_avg]) == pytest.approx(70.0) and float(rows[1][i_pub]) == 93.8
    assert float(rows[1][i_diff]) == pytest.approx(-23.8)
    assert float(rows[2][i_avg]) == pytest.approx(97.5) and float(rows[2][i_pub]) == 95.9
    assert float(rows[2][i_diff]) == pytest.approx(1.6)
    assert rows[3][i_pub] == "" and rows[3][i_diff] == "" and float(rows[3][i_avg]) == pytest.approx(62.5)
    md = (out / "grids/pap/summary.md").read_text()
    assert "| paper avg rel% | measured - paper |" in md
    assert "-23.80" in md and "| 1.60 |" in md
    assert "measured average is over gqa, pope only" in md
    # --paper none drops the columns
    assert ablate.main([str(grid), "--benchmarks", "gqa,pope", "--out", str(out), "--report-only", "--paper", "none"]) == 0
    header, _ = _csv(out)
    assert "paper avg rel%" not in header


def test_paper_flag_adds_the_column_and_rejects_unknown_names(tmp_path, capsys):
    results = {(i, b): 50.0 for i in range(4) for b in ("gqa", "pope")}
    grid, out = _fill(tmp_path, results)
    plain = tmp_path / "plain.yaml"
    plain.write_text(grid.read_text().replace("paper: table1\n", "").replace("name: pap", "name: plain"))
    assert ablate.main([str(plain), "--benchmarks", "gqa,pope", "--out", str(out), "--report-only"]) == 0
    assert "paper avg rel%" not in (out / "grids/plain/summary.csv").read_text()
    assert ablate.main([str(plain), "--benchmarks", "gqa,pope", "--out", str(out), "--report-only",
                        "--paper", "table1"]) == 0
    header = (out / "grids/plain/summary.csv").read_text().splitlines()[0].split(",")
    assert "paper avg rel%" in header
    assert ablate.main([str(plain), "--benchmarks", "gqa,pope", "--out", str(out), "--paper", "nope"]) == 2
    assert "unknown paper table 'nope'" in capsys.readouterr().err


def test_table1_grid_expands_with_a_published_value_for_every_run():
    from pathlib import Path

    g = load_grid(Path(__file__).resolve().parents[1] / "ablations" / "table1.yaml")
    assert not g.duplicates and g.paper is not None
    # full + FastV/PDrop/SparseVLM/ToMe x 3 + VisionZip/DivPrune/VisPruner/HoloV x 3 x +-RESTORE
    assert len(g.runs) == 1 + 4 * 3 + 4 * 3 * 2
    assert g.benchmarks == ["gqa", "mmbench", "mme", "pope", "sqa", "vqav2", "textvqa", "seed"]
    cells = {(r.settings.reduction.method, r.settings.reduction.restore, r.settings.reduction.n_vis) for r in g.runs[1:]}
    assert cells == {k for k in g.paper.values}  # exactly the paper's 36 cells
    assert all(r.settings.eval.vision_cache == 512 for r in g.runs)
