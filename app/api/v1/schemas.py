"""KServe V1 `:predict` wire schemas: `{"instances": [text, ...]}` in, `{"predictions": [...]}` out, as KServe's
huggingfaceserver (release v0.20.0, python/huggingfaceserver/huggingfaceserver/encoder_model.py) takes and answers
them for a sequence-classification model."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from app.api.predict.schemas import Text


class V1PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"instances": ["This medicine worked wonders.", "Terrible side effects."]}]},
    )

    instances: Annotated[list[Text], Field(min_length=1, description="The texts to classify (single texts: "
                                                                      "huggingfaceserver takes no pairs here).")]
    model_name: StrictStr | None = Field(None, description="The path's model, if given (another one: 422).")


class V1PredictResponse(BaseModel):
    predictions: list[int | dict[str, float]] = Field(
        description="Per instance, the predicted class id (the label's index in the model metadata's "
        "`parameters.labels`, id2label order); or, where the model's serving.json sets `v1_return_probabilities`, "
        'its softmax probabilities by class id, rounded to 4 decimals: {"0": 0.1234, "1": 0.8766}.')
