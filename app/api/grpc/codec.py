"""gRPC codec: a ModelInferRequest's tensors (texts in `contents.bytes_contents`, or Triton's BYTES serialization
in `raw_input_contents`, what tritonclient.grpc sends) and parameters as plain values for app.protocol.v2, and its
outputs back as a ModelInferResponse: in `raw_output_contents` when the request came raw (tritonclient.grpc reads
only those), else in each output's `contents`. No decisions here."""

from __future__ import annotations

from typing import Any

from app.api.grpc import grpc_predict_v2_pb2 as pb
from app.errors import InvalidInput
from app.protocol import v2


def parameters(params: Any) -> dict[str, Any]:
    """A protobuf map<string, InferParameter> as plain values (bool, int, str or float; None when unset)."""
    return {key: getattr(value, value.WhichOneof("parameter_choice") or "", None) for key, value in params.items()}


def _texts(elements: Any, name: str) -> list[str]:
    texts = []
    for i, raw in enumerate(elements):
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input {name!r}: element {i} is not valid UTF-8") from None
    return texts


def parse_infer(request: pb.ModelInferRequest) -> tuple[v2.Infer, bool]:
    """The request checked as V2 checks it, and whether it came raw (then the answer goes raw too)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs: "
                           "send one per input, in the order of `inputs`")
    columns: dict[str, list[str]] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        v2.check_input_name(name, request.model_name, columns)
        if "shared_memory_region" in tensor.parameters:
            raise InvalidInput("shared memory is not supported: send the data in the request")
        if tensor.datatype != "BYTES":
            v2.check_texts(name, tensor.datatype, list(tensor.shape), [])  # says which datatype it takes
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {name!r} has contents and raw_input_contents: send one of them")
            texts = v2.decode_bytes(raw[i], name)
        else:
            texts = _texts(tensor.contents.bytes_contents, name)
        columns[name] = v2.check_texts(name, tensor.datatype, list(tensor.shape), texts)
    outputs = [(out.name, parameters(out.parameters)) for out in request.outputs] or None
    req = v2.request(columns, parameters(request.parameters), outputs, request.id or None, request.model_name)
    return req, bool(raw)


def encode_response(inferred: v2.Inferred, raw: bool) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=inferred.model.name, model_version=str(inferred.model.version),
                                     id=inferred.id or "")
    response.parameters["truncated"].int64_param = inferred.truncated  # texts the model read only in part
    for output in inferred.outputs:
        tensor = response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        values = output.values
        if isinstance(values, list):  # BYTES
            if raw:
                response.raw_output_contents.append(v2.encode_bytes(values))
            else:
                tensor.contents.bytes_contents.extend(value.encode() for value in values)
        elif raw:  # FP32, row-major little-endian
            response.raw_output_contents.append(values.astype("<f4", copy=False).tobytes())
        else:
            tensor.contents.fp32_contents.extend(values.ravel().tolist())
    return response
