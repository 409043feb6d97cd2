"""The training loop's epoch choice (app.lifecycle.train.fit): the best validation figure wins; equal figures (a
few dozen held-out texts tie often) go to the epoch whose outputs diverge least from the teacher's."""

from __future__ import annotations

import torch

from app.lifecycle.train import TrainOptions, fit


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings = torch.nn.Embedding(4, 2)
        self.out = torch.nn.Linear(2, 2)

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.embeddings


def run(figures: list[dict]) -> tuple[int, float]:
    """Train Tiny for len(figures) epochs, validate() answering figures in turn, each epoch's weights marked in the
    bias; returns (best epoch, the bias the model ends with)."""
    model = Tiny()
    epochs = iter(range(1, len(figures) + 1))

    def batch_loss(batch: list[int]) -> torch.Tensor:
        return model.out(model.embeddings(torch.tensor(batch))).pow(2).mean()

    def validate() -> dict:
        epoch = next(epochs)
        with torch.no_grad():
            model.out.bias.fill_(float(epoch))
        return figures[epoch - 1]

    options = TrainOptions(epochs=len(figures), batch_size=2, patience=len(figures), seed=1)
    _, best, _ = fit(model, [1, 1, 1, 1], batch_loss, validate, options, best_by="agreement")
    return best, float(model.out.bias.detach()[0])


def test_the_better_figure_wins_whatever_the_divergence():
    assert run([{"agreement": 0.8, "divergence": 0.1}, {"agreement": 0.9, "divergence": 0.5}]) == (2, 2.0)


def test_a_tie_goes_to_the_lower_divergence():
    best, bias = run([{"agreement": 0.8, "divergence": 0.3}, {"agreement": 0.8, "divergence": 0.1},
                      {"agreement": 0.8, "divergence": 0.2}])
    assert (best, bias) == (2, 2.0)


def test_without_a_divergence_a_tie_keeps_the_first():
    assert run([{"agreement": 0.8}, {"agreement": 0.8}]) == (1, 1.0)
