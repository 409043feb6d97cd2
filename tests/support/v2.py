"""Open Inference Protocol (V2) request bodies."""

from __future__ import annotations

import orjson


def v2_body(*inputs, binary=False, outputs: list[str] | None = None) -> tuple[bytes, str | None]:
    """A V2 infer body of BYTES inputs (name, texts), JSON or Triton's binary extension, and the header length
    for Inference-Header-Content-Length (None when JSON)."""
    tensors, raw = [], b""
    for name, texts in inputs:
        tensor = {"name": name, "datatype": "BYTES", "shape": [len(texts)]}
        if binary:
            part = b"".join(len(t.encode()).to_bytes(4, "little") + t.encode() for t in texts)
            tensor["parameters"] = {"binary_data_size": len(part)}
            raw += part
        else:
            tensor["data"] = texts
        tensors.append(tensor)
    header = orjson.dumps({"inputs": tensors} | ({"outputs": [{"name": o} for o in outputs]} if outputs else {}))
    return header + raw, str(len(header)) if binary else None
