"""The local launcher's long-lived workers: a grid run through them writes byte-identical answers to
one process per run (--isolate), a failing run is reported without stopping the others, and a
worker that was killed is replaced by a fresh one."""
import json
import textwrap
from pathlib import Path

import pytest
import torch

from llava_restore import ablate
from llava_restore.ablation.grid import load_grid
from llava_restore.ablation.launch import Worker
from llava_restore.ablation.runs import make_tasks


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from llava_restore.model.builder import save_pretrained
    from llava_restore.playground.config import Sizes
    from llava_restore.playground.data import build
    from llava_restore.tools.make_tiny import build_tiny

    root = tmp_path_factory.mktemp("worker")
    tok, m, proc = build_tiny(seed=0)
    with torch.no_grad():  # larger weights: answers vary with the image, the question and the reduction
        for name, p in m.named_parameters():
            if not name.startswith("model.vision_tower") and p.dim() > 1 and "embed" not in name:
                p.mul_(10.0)
    model = root / "tiny-llava"
    save_pretrained(m, str(model), tokenizer=tok, image_processor=proc, fmt="liuhaotian")
    data = root / "data"
    build(data, seed=0, sizes=Sizes.tiny(), progress=False, force=True)
    grid = root / "grid.yaml"
    grid.write_text(textwrap.dedent(f"""
        name: w
        fixed:
          eval: {{model_path: {model}, data_root: {data / 'eval'}, max_new_tokens: 3, device: cpu, batch_size: 4}}
        axes:
          method: [divprune, vispruner]
          n_vis: [16]
          restore: [false, true]
    """))
    return model, data, grid


def answers(out: Path, grid: Path) -> dict:
    tasks = make_tasks(load_grid(grid).runs, ["pope"], out)
    return {t.folder.name + "/" + t.benchmark: (t.folder / "answers.jsonl").read_bytes() for t in tasks}


def test_workers_equal_one_process_per_run(setup, tmp_path):
    _, _, grid = setup
    common = [str(grid), "--benchmarks", "pope", "--parallel", "2"]
    assert ablate.main(common + ["--out", str(tmp_path / "workers")]) == 0
    assert ablate.main(common + ["--out", str(tmp_path / "isolated"), "--isolate"]) == 0
    a, b = answers(tmp_path / "workers", grid), answers(tmp_path / "isolated", grid)
    assert len(a) == 5 and a == b
    assert len(set(a.values())) > 2  # the runs answer differently: equality is not vacuous
    logs = sorted((tmp_path / "workers" / "grids" / "w" / "logs").glob("*.log"))
    assert len(logs) == 5 and all("result.json" in p.read_text() for p in logs)


def test_failing_run_is_logged_and_the_rest_finish(setup, tmp_path):
    model, data, _ = setup
    grid = tmp_path / "bad.yaml"
    grid.write_text(textwrap.dedent(f"""
        name: bad
        fixed:
          eval: {{model_path: {model}, data_root: {data / 'eval'}, max_new_tokens: 3, device: cpu}}
          reduction: {{method: divprune}}
        axes:
          n_vis: [16, 100000]
    """))
    out = tmp_path / "out"
    ablate.main([str(grid), "--benchmarks", "pope", "--out", str(out), "--parallel", "1"])
    tasks = make_tasks(load_grid(grid).runs, ["pope"], out)
    by_name = {t.folder.name.rsplit("-", 1)[0]: t for t in tasks}
    assert by_name["full"].done() and by_name["divprune-n16"].done()
    assert not by_name["divprune-n100000"].done()
    (log,) = [p for p in (out / "grids" / "bad" / "logs").glob("*.log") if "100000" in p.read_text().splitlines()[0]]
    text = log.read_text()
    assert "100000" in text.splitlines()[-1] and "Traceback" not in text  # one clear line, no traceback


def test_killed_worker_is_replaced(setup, tmp_path):
    model, data, grid = setup
    tasks = make_tasks(load_grid(grid).runs, ["pope"], tmp_path / "out")
    worker = Worker(tasks[0].command[0], None)
    first = worker.run(tasks[0], 0, tmp_path / "logs")
    assert first.returncode == 0 and tasks[0].done()
    worker.proc.kill()
    worker.proc.wait()
    again = worker.run(tasks[1], 1, tmp_path / "logs")  # a fresh worker is started
    assert again.returncode == 0 and tasks[1].done()
    worker.close()
    assert json.loads((tasks[1].folder / "result.json").read_text())["n_answered"] > 0
