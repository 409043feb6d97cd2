"""Helpers shared by the test modules (no test module imports another; fixtures live in the conftest.py files):

- paths: the repository root and the demo model's place
- tiny: tiny random checkpoints (real architectures, tokenizers, heads) and their export as a model version
- servers: real `bertserve serve` processes on loopback, requests to them, and the slow model that holds one busy
- apps: the real app in-process over httpx's ASGITransport (no process, no socket)
- metrics: Prometheus text read back
- v2: Open Inference Protocol (V2) request bodies
- texts: long and awkward texts and a counting tokenizer (input amplification)
- batching, sessions: a fake model for the batcher alone; session stand-ins (simulated CUDA, held sessions)
- services: the registry in-process, without the app
- golden: golden outputs written for a tiny version
- bench: a benchmark results document
- deploy: the deploy tier's tools, manifests and dashboard
"""
