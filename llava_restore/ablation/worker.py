"""A long-lived process that runs many eval.run invocations, so a grid pays the interpreter start,
the torch/transformers imports and the model load once per worker instead of once per run.

    python -m llava_restore.ablation.worker      # driven by launch.run_local, not by hand

Protocol (one JSON object per line): the launcher writes ``{"argv": [...], "log": path}`` to the
worker's stdin; the worker runs ``llava_restore.eval.run.main(argv)`` with its stdout and stderr
(file descriptors 1 and 2, so tqdm, warnings and logging land there too) sent to ``log``, and
answers ``{"rc": int, "seconds": float}`` on its original stdout. A run that fails (a bad option,
an exception) gets its error in its log and a non-zero rc; the worker goes on with the next one.

What is shared between runs is explicit: one ``BundleCache`` (models, keyed by every load
argument). Every run still builds its own settings, vision cache and timers, so its answers and
timings are those of a run in a fresh process (tests/test_ablation_worker.py).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

from llava_restore.eval.generate import INPUT_ERRORS, BundleCache
from llava_restore.eval.run import main as eval_main


def run_task(argv: list, log_path: str, bundles: BundleCache) -> int:
    """Run one eval.run invocation with fds 1 and 2 redirected to ``log_path``; -> exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            eval_main(argv, bundles=bundles)
            rc = 0
        except SystemExit as exc:  # argparse errors and cli-style exits
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except INPUT_ERRORS as exc:  # what eval.run's cli_entry turns into one line
            print(f"error: {exc}", file=sys.stderr)
            rc = 1
        except Exception:  # noqa: BLE001 - a crashed run is logged with its traceback, the grid goes on
            traceback.print_exc()
            rc = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
    return rc


def serve(stdin=sys.stdin) -> None:
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")  # protocol replies
    bundles = BundleCache()
    for line in stdin:
        if not line.strip():
            continue
        task = json.loads(line)
        t0 = time.perf_counter()
        rc = run_task(task["argv"], task["log"], bundles)
        channel.write(json.dumps({"rc": rc, "seconds": time.perf_counter() - t0}) + "\n")


if __name__ == "__main__":
    serve()
