"""Ablation grids: expansion, typo rejection, skip-existing, HParams event files (no model needed:
eval.run is replaced by a fake interpreter that writes result.json into eval.run's own folder)."""
import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from llava_restore import ablate
from llava_restore.ablation.grid import GridError, load_grid
from llava_restore.ablation.runs import make_tasks, pending_tasks, run_folder

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="grid.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


# ------------------------------------------------------------------------------ expansion
def test_expansion_order_types_reference_zip_include_exclude(tmp_path):
    g = load_grid(write(tmp_path, """
        fixed:
          eval: {batch_size: 4}
          reduction: {attn_backend: eager}
        axes:
          reduction.method: [divprune, holov]
          n_vis: [64, "128"]
        zip:
          - {restore: [false, true], split_ratio: [0.5, 0.25]}
        exclude:
          - {method: holov, n_vis: 128}
        include:
          - {method: tome, n_vis: 32}
    """))
    # reference + 2 methods x 2 n x 2 zipped - 2 excluded + 1 included
    assert len(g.runs) == 1 + 8 - 2 + 1
    ref = g.runs[0]
    assert ref.reference and ref.settings.reduction.method == "none" and ref.settings.reduction.n_vis is None
    assert ref.settings.reduction.attn_backend == "eager" and ref.settings.eval.batch_size == 4
    got = [(r.settings.reduction.method, r.settings.reduction.n_vis, r.settings.reduction.restore,
            r.settings.reduction.split_ratio) for r in g.runs[1:]]
    assert got == [("divprune", 64, False, 0.5), ("divprune", 64, True, 0.25),
                   ("divprune", 128, False, 0.5), ("divprune", 128, True, 0.25),
                   ("holov", 64, False, 0.5), ("holov", 64, True, 0.25),
                   ("tome", 32, False, 0.5)]
    assert all(isinstance(r.settings.reduction.n_vis, int) for r in g.runs[1:])  # "128" typed to int
    # presets resolved: restore on -> merge, retain, both terms; off -> none of them
    on, off = g.runs[2].settings.reduction, g.runs[1].settings.reduction
    assert (on.merge, on.position_mode, on.size_term, on.distance_term) == (True, "retain", True, True)
    assert (off.merge, off.position_mode, off.size_term, off.distance_term) == (False, "reindex", False, False)
    assert g.axis_keys == ["reduction.method", "reduction.n_vis", "reduction.restore", "reduction.split_ratio"]
    assert all(r.settings.eval.batch_size == 4 for r in g.runs)


def test_duplicate_runs_are_dropped_and_overrides_apply(tmp_path):
    g = load_grid(write(tmp_path, """
        reference: false
        fixed: {method: divprune, n_vis: 64}
        axes:
          restore: [true]
        include:
          - {restore: true}
    """), overrides=["eval.batch_size=8", "n_vis=32"])
    assert len(g.runs) == 1 and len(g.duplicates) == 1
    assert g.runs[0].settings.eval.batch_size == 8 and g.runs[0].settings.reduction.n_vis == 32


def test_shipped_grids_expand():
    sizes = {}
    for name in ("main", "calibration", "positions", "anchors", "smoke"):
        g = load_grid(REPO / "ablations" / f"{name}.yaml")
        assert not g.duplicates, (name, g.duplicates)
        sizes[name] = len(g.runs)
    assert sizes["main"] == 1 + 3 * 3 * 2
    assert sizes["smoke"] == 2


# ------------------------------------------------------------------------------ typos
@pytest.mark.parametrize("body, line, needle", [
    ("axes:\n  method: [divprune]\n  n_viz: [64]\n", 3, "unknown key 'n_viz' (did you mean 'n_vis'?)"),
    ("fixed:\n  reduction:\n    distnce_c: 3\n", 3, "unknown key 'reduction.distnce_c'"),
    ("fixed:\n  evl: {batch_size: 2}\n", 2, "unknown key 'evl'"),
    ("axis:\n  method: [divprune]\n", 1, "unknown top-level key 'axis' (did you mean 'axes'?)"),
    ("axes:\n  method: [divprune]\n  n_vis:\n    - 64\n    - sixty\n", 5, "bad value 'sixty' for reduction.n_vis"),
    ("axes:\n  method: [divprun]\n", 2, "unknown reduction method 'divprun'"),
    ("include:\n  - {method: divprune, n_vis: 64, restor: true}\n", 2, "unknown key 'restor'"),
])
def test_typo_fails_naming_file_line_and_key(tmp_path, body, line, needle):
    path = write(tmp_path, body, "typo.yaml")
    with pytest.raises(GridError) as err:
        load_grid(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert needle in msg


def test_cli_typo_fails_before_running(tmp_path, capsys):
    path = write(tmp_path, "axes:\n  method: [divprune]\n  n_viss: [64]\n", "bad.yaml")
    rc = ablate.main([str(path), "--benchmarks", "pope", "--out", str(tmp_path / "runs")])
    assert rc == 2
    assert "n_viss" in capsys.readouterr().err and str(path) in str(path)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------ folders, skip
def test_task_folder_is_eval_runs_own(tmp_path, capsys):
    from llava_restore.eval import run as er

    g = load_grid(REPO / "ablations" / "smoke.yaml")
    tasks = make_tasks(g.runs, ["pope"], tmp_path)
    for t in tasks:
        argv = t.command[t.command.index("llava_restore.eval.run") + 1:]
        er.main(argv + ["--print-run-dir"])
        assert capsys.readouterr().out.strip() == str(t.folder)
    assert len({t.folder for t in tasks}) == 2


def test_skip_existing_and_aliases(tmp_path):
    g = load_grid(write(tmp_path, """
        fixed: {method: divprune, n_vis: 64}
        axes:
          restore: [false, true]
          eval.batch_size: [1, 2]     # batch size does not enter eval.run's folder: aliases
    """))
    tasks = make_tasks(g.runs, ["gqa", "pope"], tmp_path / "runs")
    assert len(tasks) == 5 * 2
    aliases = [t for t in tasks if t.alias_of is not None]
    # the reference (bs 1) and the bs-1 runs own their folders; every bs-2 run is an alias
    assert len(aliases) == 4 and all(g.runs[t.run_index].settings.eval.batch_size == 2 for t in aliases)
    assert all(tasks[t.alias_of].folder == t.folder for t in aliases)
    assert len(pending_tasks(tasks)) == 6
    done = [t for t in tasks if t.alias_of is None][:2]
    for t in done:
        t.folder.mkdir(parents=True)
        (t.folder / "result.json").write_text(json.dumps({"metrics": {}}))
    todo = pending_tasks(tasks)
    assert len(todo) == 4 and not {t.folder for _, t in todo} & {t.folder for t in done}
    broken = todo[0][1].folder
    broken.mkdir(parents=True)
    (broken / "result.json").write_text("{")
    with pytest.raises(ValueError, match="result.json: not valid JSON"):
        pending_tasks(tasks)


FAKE_EVAL = """#!{python}
# Stand-in for `python -m llava_restore.eval.run`: writes result.json into the folder eval.run
# would use (looked up in a map the test wrote with eval.run's naming), without importing torch.
import json, os, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_EVAL_LOG"], "a") as f:
    f.write(" ".join(argv) + "\\n")
folder = json.load(open(os.environ["FAKE_EVAL_FOLDERS"]))[" ".join(argv)]
n = int(argv[argv.index("--n-vis") + 1]) if "--n-vis" in argv else 576
restore = "--restore" in argv
bench = argv[argv.index("--benchmark") + 1]
value = (50.0 + n / 576 * 30 + (5 if restore else 0)) * (1.0 if bench == "gqa" else 1.1)
key = {{"gqa": "accuracy", "pope": "mean_f1"}}[bench]
os.makedirs(folder, exist_ok=True)
json.dump({{"metrics": {{key: value}}, "timings": {{"prefill_ms_per_sample": n / 10}}}},
          open(os.path.join(folder, "result.json"), "w"))
"""


def test_runner_skips_finished_runs_and_reports(tmp_path, monkeypatch):
    grid = write(tmp_path, """
        name: t
        fixed: {method: divprune}
        axes:
          n_vis: [64, 192]
          restore: [false, true]
    """)
    out = tmp_path / "runs"
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_EVAL.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    tasks = make_tasks(load_grid(grid).runs, ["gqa", "pope"], out, python=str(fake))
    folders = tmp_path / "folders.json"
    folders.write_text(json.dumps({" ".join(t.command[1:]): str(t.folder) for t in tasks}))
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_EVAL_LOG", str(log))
    monkeypatch.setenv("FAKE_EVAL_FOLDERS", str(folders))
    args = [str(grid), "--benchmarks", "gqa,pope", "--out", str(out), "--python", str(fake), "--parallel", "2", "--isolate"]
    assert ablate.main(args) == 0
    assert len(log.read_text().splitlines()) == 5 * 2
    assert ablate.main(args) == 0  # everything has a result: nothing runs
    assert len(log.read_text().splitlines()) == 10
    (tasks[3].folder / "result.json").unlink()  # an interrupted run
    assert ablate.main(args) == 0
    calls = log.read_text().splitlines()
    assert len(calls) == 11 and calls[-1] == " ".join(tasks[3].command[1:])

    gdir = out / "grids" / "t"
    csv = (gdir / "summary.csv").read_text().splitlines()
    assert csv[0].split(",")[:4] == ["#", "method", "restore", "tokens"]
    assert csv[0].split(",")[-3:] == ["avg rel%", "prefill ms", "status"]
    ref_gqa, ref_pope = 80.0, 88.0
    row = next(line.split(",") for line in csv[1:] if line.split(",")[1:4] == ["divprune", "False", "64"])
    gqa = 50.0 + 64 / 576 * 30
    assert float(row[4]) == pytest.approx(gqa) and float(row[5]) == pytest.approx(100 * gqa / ref_gqa)
    assert float(row[7]) == pytest.approx(100 * gqa * 1.1 / ref_pope)
    assert (gdir / "accuracy_vs_tokens.png").stat().st_size > 1000
    assert "| # | method | restore | tokens |" in (gdir / "summary.md").read_text()
    check_hparams_events(gdir / "tb", n_runs=5)


def check_hparams_events(tb: Path, n_runs: int):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    def plugin(path):
        acc = EventAccumulator(str(path))
        acc.Reload()
        return {tag: plugin_data_pb2.HParamsPluginData.FromString(raw)
                for tag, raw in acc.PluginTagToContent(metadata.PLUGIN_NAME).items()}, acc

    root, _ = plugin(tb)
    exp = root[metadata.EXPERIMENT_TAG].experiment
    assert {h.name for h in exp.hparam_infos} == {"method", "restore", "tokens"}
    tokens_info = next(h for h in exp.hparam_infos if h.name == "tokens")
    assert sorted(v.number_value for v in tokens_info.domain_discrete.values) == [64, 192, 576]
    assert {m.name.tag for m in exp.metric_infos} >= {"gqa/accuracy", "pope/mean_f1", "avg/relative"}
    runs = sorted(p for p in tb.iterdir() if p.is_dir())
    assert len(runs) == n_runs
    seen = set()
    for run in runs:
        data, acc = plugin(run)
        hp = data[metadata.SESSION_START_INFO_TAG].session_start_info.hparams
        tokens, restore = int(hp["tokens"].number_value), hp["restore"].string_value
        seen.add((hp["method"].string_value, tokens, restore))
        gqa = acc.Scalars("gqa/accuracy")[0].value
        expect = 50.0 + tokens / 576 * 30 + (5 if restore == "true" else 0)
        assert gqa == pytest.approx(expect, rel=1e-6)
        rel = acc.Scalars("avg/relative")[0].value
        assert rel == pytest.approx(100 * expect / 80.0, rel=1e-5)
    assert seen == {("none", 576, "false"), ("divprune", 64, "false"), ("divprune", 64, "true"),
                    ("divprune", 192, "false"), ("divprune", 192, "true")}


def test_slurm_dry_run_writes_task_file(tmp_path, capsys):
    out = tmp_path / "runs"
    rc = ablate.main([str(REPO / "ablations" / "smoke.yaml"), "--benchmarks", "gqa,pope", "--out", str(out),
                      "--launcher", "slurm", "--dry-run", "--parallel", "3", "--sbatch-args=--partition=gpu"])
    assert rc == 0
    lines = (out / "grids" / "smoke" / "slurm" / "tasks.txt").read_text().splitlines()
    assert len(lines) == 4 and all(line.startswith("python -m llava_restore.eval.run --benchmark ") for line in lines)
    printed = capsys.readouterr().out
    assert "--array=0-3%3" in printed and "--partition=gpu" in printed and "ABLATE_TASKS=" in printed


def test_sbatch_template_runs_its_array_line(tmp_path):
    import subprocess

    tasks = tmp_path / "tasks.txt"
    tasks.write_text(f"echo first > {tmp_path}/out\necho 'second task' > {tmp_path}/out\n")
    env = {**os.environ, "ABLATE_TASKS": str(tasks), "ABLATE_REPO": str(tmp_path), "SLURM_ARRAY_TASK_ID": "1",
           "ABLATE_VENV": str(tmp_path / "no-venv")}
    proc = subprocess.run(["bash", str(REPO / "scripts/slurm/ablate.sbatch")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out").read_text() == "second task\n"
    env["SLURM_ARRAY_TASK_ID"] = "2"
    proc = subprocess.run(["bash", str(REPO / "scripts/slurm/ablate.sbatch")], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "task 2 does not exist" in proc.stderr


def test_commands_carry_the_resolved_config_to_eval_run():
    """eval.run, parsing each task's command, builds exactly the grid's resolved ReductionConfig."""
    from llava_restore.eval import run as er

    for name in ("main", "calibration", "positions", "anchors"):
        g = load_grid(REPO / "ablations" / f"{name}.yaml")
        for t in make_tasks(g.runs, ["gqa"], Path("/tmp/unused"), folder_fn=lambda cmd: Path(" ".join(cmd))):
            ap = er.build_parser()
            args = ap.parse_args(t.command[t.command.index("llava_restore.eval.run") + 1:])
            settings = er.settings_from_args(args, er.get_adapter("loader"), ap)
            expected = g.runs[t.run_index].settings.reduction
            if expected.method == "none":
                assert settings.reduction is None
            else:
                assert settings.reduction == expected, (name, t.command)
            assert args.batch_size == g.runs[t.run_index].settings.eval.batch_size


def test_report_metric_override_and_undefined_metric(tmp_path, capsys):
    """A run whose main metric is undefined (POPE F1 when nothing is answered "yes") is done, not
    missing; --metric pope=mean_acc reports another metric of result.json."""
    out = tmp_path / "runs"
    grid = REPO / "ablations" / "smoke.yaml"
    tasks = make_tasks(load_grid(grid).runs, ["pope"], out)
    for t, acc in zip(tasks, (50.0, 40.0)):
        t.folder.mkdir(parents=True)
        (t.folder / "result.json").write_text(json.dumps({"metrics": {"mean_f1": None, "mean_acc": acc}}))
    assert ablate.main([str(grid), "--benchmarks", "pope", "--out", str(out), "--report-only"]) == 0
    rows = [line.split(",") for line in (out / "grids/smoke/summary.csv").read_text().splitlines()]
    assert rows[0][4] == "pope mean_f1" and [r[4] for r in rows[1:]] == ["", ""] and [r[-1] for r in rows[1:]] == ["done"] * 2
    md = (out / "grids/smoke/summary.md").read_text()
    assert md.count("| n/a | n/a |") == 2 and "n/a: undefined for a finished run" in md
    assert ablate.main([str(grid), "--benchmarks", "pope", "--out", str(out), "--report-only",
                        "--metric", "pope=mean_acc"]) == 0
    rows = [line.split(",") for line in (out / "grids/smoke/summary.csv").read_text().splitlines()]
    assert rows[0][4] == "pope mean_acc" and float(rows[2][5]) == pytest.approx(80.0)
    assert ablate.main([str(grid), "--benchmarks", "pope", "--out", str(out), "--metric", "gqa=accuracy"]) == 2
    assert "not in --benchmarks" in capsys.readouterr().err
