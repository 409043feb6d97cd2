"""A benchmark results document (benchmarks/bench.py's JSON), small and made up: for the report's logic."""

from __future__ import annotations


def sample_point(rps, p50, errors=0):
    return {"rps": rps, "p50_ms": p50, "p99_ms": 3 * p50, "errors": errors, "requests": int(rps * 8),
            "client_cpu_pct": 5.0, "server_cpu_pct": 190.0, "other_cpu_pct": 2.0, "steal_pct": 0.0}


def sample_results():
    raw_round = lambda limit: {
        "1p x 2t b1 arrival": {"seq_s": 0.8 * limit, "p50_ms": 6.0},
        "1p x 1t b1 arrival": {"seq_s": 0.5 * limit, "p50_ms": 8.0},
        "2p x 1t b4 sorted": {"seq_s": limit},
    }
    return {
        "meta": {"command": "python benchmarks/bench.py", "date": "today", "wall_s": 300, "cpu_model": "AMD EPYC",
                 "cores": 2, "memory_gib": 8, "python": "3.11", "onnxruntime": "1.31", "tokenizers": "0.22",
                 "model": "m", "version": 1, "artifact": "model.int8.onnx", "quantization": "int8", "provider": "cpu",
                 "max_length": 256, "texts": 379, "tokens_mean": 107, "tokens_median": 104, "tokens_max": 217,
                 "client": "wrk", "duration_s": 8, "rounds": 2},
        "raw": {"rounds": [raw_round(200), raw_round(180), raw_round(220)]},
        "servers": [{"label": "2 workers x 1 thread", "workers": 2, "threads": 1, "env": {}, "batching": [None],
                     "concurrency": [1, 32, 64],
                     "rounds": [
                         {"1": sample_point(100, 9.0), "32": sample_point(190, 150), "64": sample_point(180, 300)},
                         {"1": sample_point(100, 9.5), "32": sample_point(180, 160), "64": sample_point(200, 290)},
                     ]}],
    }
