import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLE_DIR = SHARED / "data" / "cinc2021-sample"
CHALLENGE_DIR = SHARED / "challenge"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def sample_dir():
    """The 50 real Challenge records beside the checkout; skip when absent."""
    if not SAMPLE_DIR.is_dir():
        pytest.skip("../shared/data/cinc2021-sample is not present")
    return SAMPLE_DIR


@pytest.fixture
def challenge_dir():
    """The official scoring tables beside the checkout; skip when absent."""
    if not CHALLENGE_DIR.is_dir():
        pytest.skip("../shared/challenge is not present")
    return CHALLENGE_DIR
