import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures" / "llava15-eval"

# two threads by default (the CI machine's cores); LLAVA_TEST_THREADS=1 beside another job
torch.set_num_threads(int(os.environ.get("LLAVA_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


def require_fixtures(sub: str = "") -> Path:
    path = FIXTURES / sub
    if not path.exists():
        pytest.skip(f"real LLaVA-1.5 eval fixtures not found at {path} (expected ../shared next to the repo)")
    return path


@pytest.fixture(scope="session")
def tiny_liuhaotian(tmp_path_factory):
    """A random tiny liuhaotian-format checkpoint folder (vision tower as a local sub-folder)."""
    from llava_restore.model.builder import save_pretrained
    from llava_restore.tools.make_tiny import build_tiny

    out = tmp_path_factory.mktemp("tiny_liuhaotian")
    tok, model, proc = build_tiny(seed=0)
    save_pretrained(model, str(out), tokenizer=tok, image_processor=proc, fmt="liuhaotian")
    return str(out)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_liuhaotian):
    from llava_restore.model.builder import load_pretrained_model

    return load_pretrained_model(tiny_liuhaotian, device="cpu")
