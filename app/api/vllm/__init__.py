"""vLLM's pooling wire shapes, as vLLM v0.10.2 serves them (vllm/entrypoints/openai/protocol.py,
serving_classification.py, serving_score.py; SGLang's router speaks the same /classify): `POST /classify` (texts
answered with each label's probability, the top label and the token usage) and `POST /score` (text pairs scored
by a one-logit cross-encoder: 1:1, 1:N or N:N). The method is the service's classify, as for /predict."""

from app.api.vllm.routes import router

__all__ = ["router"]
