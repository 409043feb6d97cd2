"""/predict: one text or a batch, answered with ranked labels (the Hugging Face text-classification shape)."""

from app.api.predict.routes import router

__all__ = ["router"]
