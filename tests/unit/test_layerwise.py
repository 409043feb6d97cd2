"""Layer-wise distillation's loss (app.lifecycle.distill): which teacher layer each student layer learns from, and a
relative squared difference over the real tokens only."""

from __future__ import annotations

import pytest
import torch

from app.lifecycle.distill import hidden_loss, layer_pairs


def test_each_student_layer_learns_from_the_teacher_layer_it_was_made_from():
    assert layer_pairs([0, 3, 5]) == [(0, 0), (1, 1), (2, 4), (3, 6)]  # hidden_states[0] is the embeddings
    assert layer_pairs(list(range(6))) == [(i, i) for i in range(7)]  # pruned in place: layer to layer


def test_the_loss_is_zero_for_equal_states_and_relative_to_the_teachers_scale():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 5, 8) for _ in range(3)]
    mask = torch.ones(2, 5, dtype=torch.long)
    assert float(hidden_loss(teacher, teacher, [(0, 0), (1, 1)], mask)) == 0.0
    half = [t * 0.5 for t in teacher]  # off by half of each value: 0.25 of the teacher's mean square, every layer
    assert float(hidden_loss(half, teacher, [(0, 0), (2, 2)], mask)) == pytest.approx(0.25)
    scaled = [t * 100 for t in teacher]  # the same relative miss at 100x the scale: the same loss
    assert float(hidden_loss([t * 0.5 for t in scaled], scaled, [(1, 1)], mask)) == pytest.approx(0.25)


def test_padding_does_not_count():
    teacher = [torch.ones(1, 4, 3)]
    student = [torch.ones(1, 4, 3)]
    student[0][0, 2:] = 50.0  # garbage where the mask is 0
    mask = torch.tensor([[1, 1, 0, 0]])
    assert float(hidden_loss(student, teacher, [(0, 0)], mask)) == 0.0
