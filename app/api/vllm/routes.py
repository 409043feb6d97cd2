"""vLLM's routes, declared once: documented by FastAPI, served lean (app.api.transport.LeanRoute) through the
request skeleton (app.api.transport.handle), protected like /predict (client routes: app.api.security). Parsing
and shaping in the codec; the service classifies, every input (or pair) of a request as one batcher submission
within BERTSERVE_MAX_CLIENT_BATCH_SIZE. Counted as predictions (bertserve_requests_total, by route)."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.schemas import error_responses, json_body
from app.api.transport import Call, LeanRoute, handle
from app.api.vllm.codec import check_scorer, check_truncation, encode_classify, encode_score, pairs_of, parse, texts_of
from app.api.vllm.schemas import ClassificationRequest, ClassificationResponse, ScoreRequest, ScoreResponse
from app.served import ServedModel
from app.tokenizer import TextInput

router = APIRouter(route_class=LeanRoute, tags=["vllm"])
_ERRORS = error_responses(401, 404, 413, 415, 422, 429, 500, 503, 504)


def _parse(schema, call: Call):
    req = parse(schema, call.body)
    call.model = req.model
    return req


@router.post("/classify", summary="Classify texts (vLLM's and SGLang's shape): each label's probability, the top "
             "label, token usage", response_model=ClassificationResponse, responses=_ERRORS,
             openapi_extra=json_body(ClassificationRequest))
async def classify(request: Request) -> Response:
    return await handle(request, partial(_parse, ClassificationRequest), _classify, _encode_classify)


@router.post("/score", summary="Score text pairs with a cross-encoder (vLLM's shape): text_1 with text_2, 1:1, "
             "1:N or N:N", response_model=ScoreResponse, responses=_ERRORS, openapi_extra=json_body(ScoreRequest))
async def score(request: Request) -> Response:
    return await handle(request, partial(_parse, ScoreRequest), _score, _encode_score)


async def _run(call: Call, req, inputs: list[TextInput], scorer: bool):
    async def prepare(served: ServedModel, texts: list[TextInput]) -> list[TextInput]:
        if scorer:
            check_scorer(served)
        check_truncation(req, served)
        return texts

    service = call.service
    served, scores = await service.classify(
        inputs, model=req.model, version=req.version, truncate=True,  # cut to max_length (check_truncation)
        function="none" if req.activation is False else None, timeout_s=service.timeout_s(req.timeout_ms),
        routing_key=call.routing_key, prepare=prepare,
    )
    record = call.record  # this request's record (app.record): each sequence's (row, Timing), its X-Request-ID
    return served, scores, record.rows, record.request_id


def _classify(call: Call, req: ClassificationRequest):
    return _run(call, req, list(texts_of(req)), scorer=False)


def _score(call: Call, req: ScoreRequest):
    return _run(call, req, list(pairs_of(req)), scorer=True)


def _encode_classify(req: ClassificationRequest, answer):
    served, scores, rows, request_id = answer
    return served, encode_classify(served, scores, rows, request_id)


def _encode_score(req: ScoreRequest, answer):
    served, scores, rows, request_id = answer
    return served, encode_score(served, scores, rows, request_id)
