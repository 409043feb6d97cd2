"""Rerank routes, declared once: documented by FastAPI, served lean (app.api.transport.LeanRoute) through the
request skeleton (app.api.transport.handle). Parsing and shaping in the codec; the ranking in app.rerank.
Counted as predictions (bertserve_requests_total); their documents in bertserve_rerank_documents_total, by route."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.rerank.codec import encode_cohere, encode_tei, parse, texts_of
from app.api.rerank.schemas import CohereRerankRequest, CohereRerankResponse, TeiRerankRequest, TeiRerankResponse
from app.api.schemas import error_responses, json_body
from app.api.transport import Call, LeanRoute, handle
from app.logs import request_id
from app.rerank import Ranking, rerank

router = APIRouter(route_class=LeanRoute, tags=["rerank"])
_ERRORS = error_responses(401, 404, 413, 415, 422, 429, 500, 503, 504)


def _parse(schema, call: Call):
    req = parse(schema, call.body)
    call.model = req.model
    return req


@router.post("/rerank", summary="Rerank texts for a query (text-embeddings-inference's shape): a flat list, best "
             "first", response_model=TeiRerankResponse, responses=_ERRORS, openapi_extra=json_body(TeiRerankRequest))
async def rerank_tei(request: Request) -> Response:
    return await handle(request, partial(_parse, TeiRerankRequest), _rank_tei, _encode_tei)


def _rank_tei(call: Call, req: TeiRerankRequest):
    return rerank(call.service, req.query, req.texts, route="/rerank", model=req.model, version=req.version,
                  truncate=req.truncate, raw_scores=req.raw_scores, timeout_s=call.service.timeout_s(req.timeout_ms),
                  routing_key=call.routing_key)


def _encode_tei(req: TeiRerankRequest, ranking: Ranking):
    return ranking.served, encode_tei(req, ranking)


@router.post("/v1/rerank", summary="Rerank documents for a query (Cohere v1 shape; Jina and Infinity clients too)",
             response_model=CohereRerankResponse, responses=_ERRORS, openapi_extra=json_body(CohereRerankRequest))
async def rerank_v1(request: Request) -> Response:
    return await handle(request, partial(_parse, CohereRerankRequest), partial(_rank_cohere, "1"),
                        partial(_encode_cohere, "1"))


@router.post("/v2/rerank", summary="Rerank documents for a query (Cohere v2 shape)",
             response_model=CohereRerankResponse, responses=_ERRORS, openapi_extra=json_body(CohereRerankRequest))
async def rerank_v2(request: Request) -> Response:
    return await handle(request, partial(_parse, CohereRerankRequest), partial(_rank_cohere, "2"),
                        partial(_encode_cohere, "2"))


def _rank_cohere(api_version: str, call: Call, req: CohereRerankRequest):
    return rerank(call.service, req.query, texts_of(req), route=f"/v{api_version}/rerank", model=req.model,
                  version=req.version, raw_scores=req.raw_scores, top_n=req.top_n,
                  timeout_s=call.service.timeout_s(req.timeout_ms), routing_key=call.routing_key)


def _encode_cohere(api_version: str, req: CohereRerankRequest, ranking: Ranking):
    return ranking.served, encode_cohere(req, ranking, api_version, request_id.get())
