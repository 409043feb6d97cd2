"""benchmarks/compression.py's pure logic: the Pareto front of the speed/agreement curve, and its resumable cache."""

from __future__ import annotations

from benchmarks import compression


def row(graph, seq_s, agreement):
    return {"graph": graph, "seq_s": seq_s, "agreement": agreement}


def test_pareto_front_keeps_what_no_other_graph_beats_on_both_axes():
    rows = [row("teacher", 100, 1.0), row("slow and worse", 90, 0.9), row("fast", 300, 0.8),
            row("middle", 200, 0.95), row("beaten by middle", 150, 0.94), row("tie of fast", 300, 0.8)]
    assert compression.pareto(rows) == ["teacher", "fast", "middle", "tie of fast"]


def test_the_cache_survives_a_restart(tmp_path, monkeypatch):
    monkeypatch.setattr(compression, "CACHE", tmp_path / "points.json")
    assert compression.load_cache() == {}
    compression.save_cache({"prune-h50-f50": {"training_s": 12.5}})
    assert compression.load_cache() == {"prune-h50-f50": {"training_s": 12.5}}
    assert [p.name for p in tmp_path.iterdir()] == ["points.json"]  # written whole, then renamed
