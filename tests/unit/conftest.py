"""Unit tests run against hostpy/ even when membt_host is not installed."""

import sys
from pathlib import Path

HOSTPY = Path(__file__).resolve().parents[2] / "hostpy"
if str(HOSTPY) not in sys.path:
    sys.path.insert(0, str(HOSTPY))
