"""A bystander behind one large submission, in-process on a real model (no HTTP): per round, a fresh batcher over
the model's engine is warmed with short requests (so its throughput estimate is what a server serving short
traffic would have), then one submission of --big full-length texts starts, and once it runs one short text is
submitted. Reports the short one's wait, how many batches finished meanwhile (its own included), and the
sequences/s of the whole round. Batches take from concurrent submissions in turn (app.batching), so the bystander
waits about one batch; before that it waited for most of the large submission.

    python benchmarks/bystander.py [--repository models] [--model drug-review-sentiment] [--rounds 6] [--big 512]
        [--max-batch-size 32 --max-batch-tokens 2048]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.batching import Batcher  # noqa: E402
from app.engine import cpu_name  # noqa: E402
from app.service import Service  # noqa: E402
from app.settings import Settings  # noqa: E402

LONG = ("I took this for three months for my migraines and at first it seemed to help a little but then the side "
        "effects got worse: nausea, dizziness, trouble sleeping, and a constant dry mouth that made it hard to eat. ") * 3
SHORT = "Worked well for my headaches."


async def one_round(served, big: int) -> tuple[float, int, float]:
    done: list[int] = []
    choice = served.batch_choice
    batcher = Batcher(served, max_batch_size=choice["max_batch_size"], max_batch_tokens=choice["max_batch_tokens"],
                      max_batch_padding=choice["max_batch_padding"], max_queue_size=big + 256,
                      parallel=len(served.engines), name="bystander", on_batch=lambda size, tokens: done.append(size))
    batcher.start()
    await asyncio.gather(*(batcher.submit([SHORT]) for _ in range(64)))
    start, warm = time.perf_counter(), len(done)
    large = asyncio.ensure_future(batcher.submit([f"{LONG}{k}" for k in range(big)]))
    while len(done) == warm:  # until the large one is running (one batch of it done)
        await asyncio.sleep(0.005)
    asked, before = time.perf_counter(), len(done)
    await batcher.submit([SHORT])
    wait, batches = time.perf_counter() - asked, len(done) - before
    await large
    rate = (big + 1) / (time.perf_counter() - start)
    await batcher.close()
    return wait, batches, rate


async def main(args: argparse.Namespace) -> None:
    settings = Settings(model_repository=args.repository, batch_autotune=False, max_batch_size=args.max_batch_size,
                        max_batch_tokens=args.max_batch_tokens)
    service = Service(settings)
    await service.load_all()
    served = service.resolve(args.model)
    print(f"{cpu_name()}; {args.model}, {len(served.engines)} session(s), batches of at most "
          f"{args.max_batch_size} sequences / {args.max_batch_tokens} tokens")
    rounds = []
    for k in range(args.rounds):
        rounds.append(await one_round(served, args.big))
        wait, batches, rate = rounds[-1]
        print(f"round {k}: bystander waited {wait * 1000:.0f} ms ({batches} batches finished meanwhile), "
              f"{rate:.1f} sequences/s", flush=True)
    print(f"median: bystander {statistics.median(r[0] for r in rounds) * 1000:.0f} ms, "
          f"{statistics.median(r[1] for r in rounds)} batches, {statistics.median(r[2] for r in rounds):.1f} "
          "sequences/s")
    await service.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="drug-review-sentiment")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--big", type=int, default=512)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-batch-tokens", type=int, default=2048)
    asyncio.run(main(p.parse_args()))
