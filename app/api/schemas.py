"""Wire schemas every protocol shares: the error body, model listings and readiness. Each protocol's own request
and response bodies live in its package (app.api.predict, app.api.v2, ...)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.registry import State


class ErrorResponse(BaseModel):
    error: str = Field(description="What went wrong, for humans.")
    error_type: str = Field(description="validation, payload_too_large, unsupported_media_type, not_found, "
                                        "overloaded, timeout, unhealthy, backend or internal.")


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
    reason: str | None = None
    report: dict[str, Any] | None = Field(None, description="Quality figures measured when it was published.")


class Readiness(BaseModel):
    status: str
    models: dict[str, Any]


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
