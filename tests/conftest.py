import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # shared test helpers (raster_reference)

SHARED = TESTS.parents[0].parent / "shared"
DONUT = SHARED / "data" / "donut_3dgs.ply"


@pytest.fixture
def donut_path():
    if not DONUT.exists():
        pytest.skip(f"real test file not found: {DONUT}")
    return DONUT
