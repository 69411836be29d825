"""Test-wide set-up: ``tests/helpers`` (independent references, test-only data, the training runner,
the autograd reach of causal models) is importable from every test module."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
