"""Explanations over HTTP: `POST /explain` (one text, bertserve's own form) and KServe V1's
`POST /v1/models/{name}:explain` (`instances` in, `predictions` and `explanations` out). The method is
app.explain's (occlusion)."""

from app.api.explain.routes import router

__all__ = ["router"]
