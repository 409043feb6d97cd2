"""The plain server the benchmark measures bertserve against, in the same run: FastAPI + onnxruntime on the INT8
artifact, one single-thread session per worker, no batching, run with `uvicorn --workers 2 --loop uvloop --http
httptools` (the best of the simple rivals in DESIGN §2). What a user writes in an afternoon; not part of bertserve.

    PLAIN_MODEL_DIR=models/drug-review-sentiment/1 uvicorn benchmarks.plain_server:app --workers 2 ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import ORJSONResponse
from tokenizers import Tokenizer

MODEL = Path(os.environ["PLAIN_MODEL_DIR"])
CONFIG = json.loads((MODEL / "bertserve.json").read_text())
LABELS = CONFIG["labels"]
ARTIFACT = next(a for a in CONFIG["artifacts"] if "cpu" in a["providers"])  # the INT8 one when published

tokenizer = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
tokenizer.no_padding()
tokenizer.enable_truncation(max_length=CONFIG["max_length"])
options = ort.SessionOptions()
options.intra_op_num_threads = options.inter_op_num_threads = 1
session = ort.InferenceSession(str(MODEL / ARTIFACT["file"]), options, providers=["CPUExecutionProvider"])
needs_token_types = "token_type_ids" in {i.name for i in session.get_inputs()}
app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> ORJSONResponse:
    ids = np.array([tokenizer.encode((await request.json())["inputs"]).ids], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if needs_token_types:
        feed["token_type_ids"] = np.zeros_like(ids)
    logits = session.run(None, feed)[0][0]
    scores = np.exp(logits - logits.max())
    scores /= scores.sum()
    return ORJSONResponse(sorted(({"label": l, "score": float(s)} for l, s in zip(LABELS, scores)),
                                 key=lambda x: -x["score"]))


@app.get("/health/ready")
async def ready() -> dict:
    return {"status": "ready"}


@app.get("/models")
async def models() -> list:
    return [{"name": MODEL.parent.name, "version": int(MODEL.name), "provider": "cpu", "artifact": ARTIFACT["file"],
             "precision": ARTIFACT["precision"], "sessions": 1, "intra_op_threads": 1, "batching": None}]
