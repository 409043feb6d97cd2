"""Wire schemas every protocol shares: the error body, model listings and readiness. Each protocol's own request
and response bodies live in its package (app.api.predict, app.api.v2, ...)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.api.errors import STATUSES
from app.registry import State


class ErrorResponse(BaseModel):
    error: str = Field(description="What went wrong, for humans.")
    error_type: str = Field(description=", ".join(STATUSES) + ".")  # every kind the status table knows


class RoutingInfo(BaseModel):
    asked: dict[str, Any] | None = Field(description="serving.json's traffic weights and shadow (null: unreadable).")
    in_force: dict[str, Any] | None = Field(description="The table requests naming no version follow (null: none "
                                                        "yet; they are answered 503).")
    refused: dict[str, str] | None = Field(description="Why the asked table is not in force: cause and reason.")


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    state: State
    version: int | None = None
    default: bool | None = Field(None, description="Whether requests naming no version go to this one (when the "
                                                   "model has no traffic split; else the fallback).")
    traffic: float | None = Field(None, description="Percent of the requests naming no version it answers now "
                                                    "(serving.json traffic weights over the ready versions).")
    shadow: bool | None = Field(None, description="Whether it is the model's shadow version (serving.json).")
    shadow_agreement: dict[str, Any] | None = Field(
        None, description="As the shadow, in this worker so far: texts compared, agreeing and disagreeing with the "
                          "answers' top label, the agreement, and texts dropped by reason.")
    labels: list[str] | None = None
    max_length: int | None = None
    provider: str | None = None
    quantization: str | None = None
    reason: str | None = Field(None, description="Why it is not serving: in full (files named) for admin keys or "
                               "with no keys configured; a fixed wording per cause for client keys.")
    cause: str | None = Field(None, description="The short cause code of readiness: load_failed, golden_gate, "
                                                "missing_files, bad_serving_json, table_refused, ...")
    routing: RoutingInfo | None = Field(None, description="The model's traffic table: asked by serving.json, in "
                                                          "force, and why the asked one is not in force.")
    report: dict[str, Any] | None = Field(None, description="Quality figures measured when it was published.")
    live_quality: dict[str, Any] | None = Field(
        None, description="GET /models/{name} with the prediction log's folder set: feedback joined to this "
        "version's logged predictions within BERTSERVE_FEEDBACK_WINDOW_S, all workers of this replica: feedback, "
        "correct, accuracy (null without feedback); compare with gate_accuracy.")
    gate_accuracy: float | None = Field(None, description="The export gate's accuracy of the artifact served "
                                        "(bertserve.json's evaluation), null without labelled gate texts.")
    drift: dict[str, Any] | None = Field(
        None, description="Population stability index of what this replica served against the export's reference "
        "(drift.json): psi per feature (label, confidence, tokens), count, reference_texts; null without drift.json.")


class Readiness(BaseModel):
    status: str = Field(description="ready, loading, draining or not ready.")
    models: dict[str, Any] = Field(description="Each model's versions and their states (failed: a cause code).")
    causes: dict[str, str] | None = Field(None, description="Each model with a problem and its cause code "
                                                            "(details: the log and GET /models/{name}).")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route for the error statuses it may answer, all in the one error shape."""
    return {code: {"model": ErrorResponse} for code in codes}


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its $defs put in place, for a request body a handler reads itself (its schema
    sits in the operation, outside components)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node and node["$ref"].startswith("#/$defs/"):
                return walk(defs[node["$ref"].rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def json_body(schema: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a route whose handler reads and validates its JSON body itself (LeanRoute):
    the model's schema, inlined."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": inline_schema(schema.model_json_schema())}}}}


def _json_integer(value: Any) -> Any:
    if isinstance(value, str | bool):  # pydantic would convert "5" and true; JSON Schema's integer takes neither
        raise ValueError("a JSON integer is expected")
    return value


# An integer field of a request body: a JSON integer (1 or 1.0, as JSON Schema counts them), not a string or a
# boolean that pydantic would otherwise convert
JsonInt = Annotated[int, BeforeValidator(_json_integer)]
