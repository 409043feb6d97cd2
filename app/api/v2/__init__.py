"""Open Inference Protocol (KServe V2 / Triton HTTP/REST): a second transport over the same service and batchers
as /predict. The protocol's rules in app.protocol.v2 (shared with gRPC), parsing and shaping here.

Each model has the input `text` (BYTES, shape [n] or [n, 1]), optionally `text_pair` (as many texts: row k
is the pair), and two outputs: `label` (BYTES [n], the best
label) and `scores` (FP32 [n, labels], in the order of the model's labels, given in the model metadata).
Triton's extensions that `tritonclient` uses are supported:
- binary tensor data: `Inference-Header-Content-Length: N` (the first N bytes are the JSON header, then the
  binary inputs, each `parameters.binary_data_size` bytes; BYTES elements are a 4-byte little-endian length and
  the bytes); outputs asked for with `parameters.binary_data: true` (or request `parameters.binary_data_output`)
  come back the same way;
- classification: `parameters.classification: k` on `scores` returns the k best as "score:index:label" strings.
Request parameters: `timeout` (microseconds, as tritonclient sends it), `truncate` (bool, default true; false:
a long text is read whole in windows, `stride` (int) and `window_aggregation` (string) as /predict's),
`function_to_apply` ("softmax", "sigmoid", "none": the `scores` function, by default the model head's, as
transformers' text-classification pipeline chooses it; the label is the same whatever). The response's
parameter `truncated` counts the texts the model read only in part.
"""

from app.api.v2.routes import router

__all__ = ["router"]
