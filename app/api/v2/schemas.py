"""Open Inference Protocol (KServe V2) wire schemas: the request and response bodies (the names of the inputs and
outputs are app.protocol.v2's), and the OpenAPI description of inference (whose binary form a schema cannot say)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from app.api.schemas import inline_schema
from app.protocol.v2 import (  # noqa: F401 (the names, kept by the protocol)
    INPUT,
    INPUTS,
    OUTPUTS,
    PAIR_INPUT,
    ZERO_SHOT_OUTPUTS,
)

HEADER_LENGTH = "Inference-Header-Content-Length"


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool
    status: str
    models: dict[str, Any]
    causes: dict[str, str] | None = None  # each model with a problem and its short cause code (as /health/ready)


class ModelReady(BaseModel):
    name: str
    version: str | None = None
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(description="labels: the order of the `scores` columns; max_length.")


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(json_schema_extra={"enum": list(INPUTS)})
    shape: list[Annotated[StrictInt, Field(ge=0)]] = Field(min_length=1, max_length=2)
    datatype: StrictStr = Field(json_schema_extra={"enum": ["BYTES"]})
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: bytes of this input in the binary part (binary tensor extension)."
    )
    data: list[Any] | None = Field(
        None, description="The texts, row-major (flat, or nested as the shape).",
        json_schema_extra={"items": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}},
    )


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(json_schema_extra={"enum": list(dict.fromkeys(OUTPUTS + ZERO_SHOT_OUTPUTS))})
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data (bool): return it in the binary part; classification (int, `scores` only)."
    )


class InferRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"id": "42", "inputs": [
            {"name": "text", "shape": [2], "datatype": "BYTES",
             "data": ["This medicine worked wonders.", "Terrible side effects."]}]}]},
    )

    id: StrictStr | None = Field(None, description="Echoed as the response's `id`.")
    # What the protocol's reference clients send beside the inputs (the kserve SDK's InferRequest.to_rest: `id` and
    # `model_name`): the path names the model; these may repeat it, never change it (another one: 422).
    model_name: StrictStr | None = Field(None, description="The path's model, if given (another one: 422).")
    model_version: StrictStr | None = Field(
        None, description="Leave it out: the path names the version (`/versions/{v}/infer`); here it is a 422 unless "
        "the route checks it equal to the path's.")
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_output (bool), timeout (microseconds), truncate (bool; false: long texts "
        "read whole in windows), stride (int), window_aggregation (mean, max or first), "
        "function_to_apply (softmax, sigmoid or none; default: the model head's); with the input `candidate_labels` "
        "(zero-shot): hypothesis_template (string, the label in place of {}), multi_label (bool)."
    )
    inputs: list[RequestInput] = Field(min_length=1, max_length=len(INPUTS))
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


# The Inference-Header-Content-Length header is described in words, not as a parameter: whether a value is right
# depends on the body, which a schema cannot say (and a fuzzer would send any).
INFER_DESCRIPTION = (
    "Classify the texts of the BYTES input `text` (shape [n] or [n, 1]), or text pairs: a second BYTES input "
    "`text_pair` of as many elements makes row k the pair (text[k], text_pair[k]); outputs `label` (BYTES [n]) and "
    "`scores` (FP32 [n, labels], labels in the order of the model metadata's `parameters.labels`).\n\n"
    "Zero-shot classification (a model with an entailment label): a BYTES input `candidate_labels` ([k]) scores "
    "every text against each label, as transformers' zero-shot-classification pipeline; outputs, each text's "
    "labels best first: `label` (BYTES [n]), `labels` (BYTES [n, k]) and `scores` (FP32 [n, k], in that order).\n\n"
    f"Binary tensor extension (what tritonclient sends by default): with the header `{HEADER_LENGTH}: N` the "
    "first N bytes of the body are the JSON request and the rest the binary inputs, each "
    "`parameters.binary_data_size` bytes (BYTES elements: a 4-byte little-endian length, then UTF-8 bytes). "
    "Outputs asked for with `parameters.binary_data: true` (or request `parameters.binary_data_output: true`) "
    f"come back the same way, the JSON part's length in the answer's `{HEADER_LENGTH}` header."
)
INFER_OPENAPI = {
    "requestBody": {
        "required": True,
        # The binary form (application/octet-stream with the header above) is described in words only: any
        # bytes would match a binary schema, while only JSON + well-formed tensors are right.
        "content": {"application/json": {"schema": inline_schema(InferRequest.model_json_schema())}},
    },
}
