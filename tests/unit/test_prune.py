"""bertserve prune's pure logic (app.lifecycle.prune): which fractions are refused, which heads and neurons go."""

from __future__ import annotations

import numpy as np
import pytest

from app.lifecycle import LifecycleError
from app.lifecycle.prune import check_fractions, choose


@pytest.mark.parametrize("heads, ffn, flag", [(1.0, 0.5, "--heads 1.0"), (-0.1, 0.5, "--heads -0.1"),
                                              (0.5, 1.0, "--ffn 1.0"), (0.5, -0.5, "--ffn -0.5")])
def test_fractions_outside_zero_to_one_are_refused(heads, ffn, flag):
    with pytest.raises(LifecycleError, match=f"{flag}: the fraction removed must be in \\[0, 1\\)"):
        check_fractions(heads, ffn, n_heads=12, n_layers=6, intermediate=1536)


def test_a_fraction_that_would_empty_a_layer_of_heads_is_refused():
    assert check_fractions(0.9, 0.5, n_heads=12, n_layers=6, intermediate=1536) == (65, 768)
    with pytest.raises(LifecycleError, match="would prune every head of a layer"):
        check_fractions(0.95, 0.5, n_heads=12, n_layers=6, intermediate=1536)  # 68 > 66
    with pytest.raises(LifecycleError, match="would prune every head of a layer"):
        check_fractions(0.9, 0.0, n_heads=2, n_layers=2, intermediate=64)  # 4 of 4


def test_a_fraction_that_would_remove_every_neuron_is_refused():
    with pytest.raises(LifecycleError, match="every one of the 4 feed-forward neurons"):
        check_fractions(0.0, 0.9, n_heads=2, n_layers=2, intermediate=4)


def test_least_important_heads_go_first_across_layers_normalised_per_layer():
    heads = [np.array([1.0, 2.0, 100.0]), np.array([0.1, 0.3, 0.2])]  # layer 1 is small but so is its norm
    pruned, _ = choose(heads, [np.ones(4), np.ones(4)], remove=2, keep=4)
    # normalised: layer 0 = (.01, .02, 1.0), layer 1 = (.27, .80, .53)
    assert pruned == {0: [0, 1]}


def test_one_head_is_always_kept_per_layer():
    heads = [np.array([1.0, 1.0]), np.array([5.0, 6.0])]
    pruned, _ = choose(heads, [np.ones(2), np.ones(2)], remove=2, keep=2)
    assert {k: len(v) for k, v in pruned.items()} == {0: 1, 1: 1}


def test_each_layer_keeps_the_same_count_of_its_most_important_neurons_in_order():
    neurons = [np.array([5.0, 1.0, 3.0, 4.0]), np.array([0.0, 9.0, 8.0, 1.0])]
    _, kept = choose([np.ones(2), np.ones(2)], neurons, remove=0, keep=2)
    assert kept == [[0, 3], [1, 2]]
