import os
from pathlib import Path

import pytest

import fireq

SOURCE_DIR = Path(os.environ.get("FIREQ_SOURCE_DIR", Path(__file__).resolve().parents[2]))
REAL_MODEL = SOURCE_DIR / "data/models/SmolLM2-135M-Instruct.Q4_1.gguf"
EVAL_TEXT = SOURCE_DIR / "data/text/wiki.eval.txt"


@pytest.fixture(scope="session")
def real_model_path() -> Path:
    if not REAL_MODEL.exists():
        pytest.skip(f"{REAL_MODEL} absent (run scripts/setup.sh)")
    return REAL_MODEL


@pytest.fixture(scope="session")
def real_model(real_model_path) -> fireq.Model:
    return fireq.Model(real_model_path, max_context=512)


@pytest.fixture(scope="session")
def eval_text() -> str:
    if not EVAL_TEXT.exists():
        pytest.skip(f"{EVAL_TEXT} absent (run scripts/setup.sh)")
    return EVAL_TEXT.read_text(encoding="utf-8")[:20000]
