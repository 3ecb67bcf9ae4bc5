"""The preset tests write their data with the on-disk format writers of ``tests/data``."""

import sys
from pathlib import Path

_DATA_TESTS = str(Path(__file__).resolve().parents[1] / "data")
if _DATA_TESTS not in sys.path:
    sys.path.insert(0, _DATA_TESTS)
