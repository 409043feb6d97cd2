"""`bertserve demo-data DIR`: the demo's reviews as plain CSV files (text,label), to try the lifecycle on."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from app.lifecycle.data import demo_split


def main(args: argparse.Namespace) -> None:
    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        texts, labels = demo_split(split)
        path = folder / f"{split}.csv"
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["text", "label"])
            writer.writerows(zip(texts, labels))
        print(f"{path}: {len(texts)} reviews")
