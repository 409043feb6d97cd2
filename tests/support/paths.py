"""Where things are: the repository root and the demo model (built by `make demo`, before `make test`)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO_REPOSITORY = ROOT / "models"
DEMO_MODEL = "drug-review-sentiment"
