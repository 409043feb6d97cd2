"""The benchmark's pure logic (benchmarks/): parsing, batch plans, statistics, report. No timing here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import report
from benchmarks.bench import parse_servers, server_label
from benchmarks.common import (
    batch_plan,
    bracketing_ratios,
    clean_review,
    cpu_seconds_from_stat,
    established_inodes,
    padded_tokens,
    parent_pid_from_stat,
    parse_reviews,
    parse_wrk,
    percentile,
    request_bodies,
    shuffled,
    summarize_latencies,
    system_cpu,
)
from benchmarks.loadgen import build_requests, parse_head
from tests.support.bench import sample_point, sample_results


def test_reviews_are_unescaped_and_unquoted():
    tsv = '\tdrugName\treview\trating\n1\tX\t"""I&#039;ve had &quot;no&quot; side effects"""\tpositive\n2\tY\t""\tneutral\n'
    assert parse_reviews(tsv) == ['I\'ve had "no" side effects']
    assert clean_review('  "&amp; fine"  ') == "& fine"


def test_request_bodies_are_one_json_object_per_line():
    bodies = request_bodies(["line one\nline two", "é ok"])
    assert all(b"\n" not in b for b in bodies)
    assert [json.loads(b)["inputs"] for b in bodies] == ["line one\nline two", "é ok"]


@pytest.mark.parametrize("order", ["arrival", "sorted"])
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_batch_plan_uses_every_text_once(order, batch):
    lengths = [5, 3, 9, 3, 1, 7, 2]
    plan = batch_plan(lengths, batch, order)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    assert all(len(b) == batch for b in plan[:-1]) and 1 <= len(plan[-1]) <= batch


def test_sorted_plan_is_stable_and_pads_less():
    lengths = [5, 3, 9, 3, 1, 7, 2, 8]
    assert batch_plan(lengths, 2, "sorted") == [[4, 6], [1, 3], [0, 5], [7, 2]]
    assert batch_plan(lengths, 2, "arrival")[0] == [0, 1]
    assert padded_tokens(batch_plan(lengths, 2, "sorted"), lengths) < padded_tokens(
        batch_plan(lengths, 2, "arrival"), lengths)
    assert padded_tokens(batch_plan(lengths, 1, "arrival"), lengths) == sum(lengths)
    with pytest.raises(ValueError):
        batch_plan(lengths, 0, "sorted")
    with pytest.raises(ValueError):
        batch_plan(lengths, 2, "random")


def test_shuffled_keeps_batches_and_is_deterministic():
    plan = batch_plan(list(range(40)), 4, "sorted")
    assert shuffled(plan) == shuffled(plan) != plan
    assert sorted(map(tuple, shuffled(plan))) == sorted(map(tuple, plan))


def test_percentile_matches_numpy():
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    for q in (0, 50, 90, 99, 100):
        assert math.isclose(percentile(values, q), float(np.percentile(values, q)))
    assert math.isnan(percentile([], 50))


def test_each_service_round_is_divided_by_the_raw_rounds_around_it():
    assert bracketing_ratios([90, 100], [100, 80, 100]) == [pytest.approx(1.0), pytest.approx(100 / 90)]
    assert bracketing_ratios([50], [100]) == [0.5]


WRK_OUT = """Running 8s test @ http://127.0.0.1:1/predict
  1 threads and 32 connections
BENCH_JSON {"requests":800,"duration_us":8000000,"connect":0,"read":1,"write":0,"status":2,"timeout":0,"p50_us":30000,"p90_us":45000,"p99_us":61000,"max_us":70000,"mean_us":31000.5}
"""


def test_wrk_output_is_read_from_our_lua_line():
    r = parse_wrk(WRK_OUT)
    assert r["rps"] == 100 and r["errors"] == 3 and r["error_kinds"] == {"read": 1, "status": 2}
    assert (r["p50_ms"], r["p99_ms"]) == (30.0, 61.0)
    with pytest.raises(ValueError):
        parse_wrk("Running 8s test\n")


def test_python_client_latencies_summarize_like_wrk():
    r = summarize_latencies([0.010, 0.020, 0.030], requests=3, errors=0, duration_s=1.5)
    assert r["rps"] == 2 and r["p50_ms"] == pytest.approx(20) and r["errors"] == 0


def test_proc_stat_fields_survive_odd_process_names():
    line = "1234 (python (x) y) S 77 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0 99 0 0\n"
    assert cpu_seconds_from_stat(line, 100) == 3.0
    assert parent_pid_from_stat(line) == 77
    cpu = system_cpu("cpu  100 0 50 800 10 5 5 20 0 0\ncpu0 1 2 3\n", 100)
    assert cpu == {"busy": 1.6, "idle": 8.1, "steal": 0.2}


def test_established_connections_on_a_port_are_found():
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1\n"
        "   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 222 1\n"
        "   2: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 333 1\n"
    )
    assert established_inodes(table, 8080) == {222}  # not the listener (0A), not the client's end


def test_http_response_heads_are_parsed():
    assert parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\ncontent-type: application/json") == (200, 12, True)
    assert parse_head(b"HTTP/1.1 429 Too Many\r\nContent-Length: 0\r\nConnection: close") == (429, 0, False)
    with pytest.raises(ValueError):
        parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked")
    with pytest.raises(ValueError):
        parse_head(b"garbage")
    (req,) = build_requests("127.0.0.1", 8000, "/predict", [b'{"inputs":"x"}'], "Bearer k")
    head, body = req.split(b"\r\n\r\n")
    assert body == b'{"inputs":"x"}' and b"Content-Length: 14" in head and b"Authorization: Bearer k" in head


def test_server_specs(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    specs = parse_servers("2x1, 1x2+BERTSERVE_MAX_BATCH_SIZE=8+src=/tmp/copy")
    assert specs[0] == {"workers": 2, "threads": 1, "env": {}, "src": None, "plain": False}
    assert specs[1] == {"workers": 1, "threads": 2, "env": {"BERTSERVE_MAX_BATCH_SIZE": "8"}, "src": "/tmp/copy",
                        "plain": False}
    assert server_label(specs[1]) == "1 worker x 1 session x 2 threads (MAX_BATCH_SIZE=8, src=copy)"
    assert server_label(specs[0]) == "2 workers x 1 session x 1 thread"
    assert server_label(parse_servers("1x1")[0]) == "1 worker x 2 sessions x 1 thread"
    assert server_label(parse_servers("1x0")[0]) == "1 worker, the server's own engine layout (make run)"
    [plain] = parse_servers("plain")
    assert plain["plain"] and (plain["workers"], plain["threads"]) == (2, 1)
    for bad in ("2", "0x1", "2x1+oops"):
        with pytest.raises(SystemExit):
            parse_servers(bad)


def test_summary_ratios_and_targets():
    summary = report.summarize(sample_results())
    assert summary["raw_limit"] == 200
    assert summary["best"]["config"] == "2p x 1t b4 sorted"
    (server,) = summary["servers"]
    by_c = {p["concurrency"]: p for p in server["points"]}
    # round 0 between raw 200 and 180 (mean 190), round 1 between 180 and 220 (mean 200)
    assert by_c[32]["ratio"] == pytest.approx(statistics_median([190 / 190, 180 / 200]))
    assert server["raw_b1_p50_same_threads_ms"] == 8.0  # the 1-thread engine, like these workers
    checks = server["checks"]
    assert checks["ratio_c32"] == {"value": pytest.approx(0.95), "ok": True}
    assert checks["ratio_c64"] == {"value": pytest.approx((180 / 190 + 1.0) / 2), "ok": True}
    # 1.25 ms over the engine's batch-1: over the 1 ms a lone request may add
    assert checks["p50_gap_c1_ms"] == {"value": pytest.approx(9.25 - 8.0), "ok": False}
    assert checks["errors"] == {"value": 0, "ok": True}
    text = report.markdown(sample_results(), summary, "benchmarks.png")
    assert "| 32 | 185.0" in text and "![" in text and "2p x 1t b4 sorted" in text


def test_points_with_raw_probes_are_divided_by_the_limit_measured_around_them():
    results = sample_results()
    for rnd in results["servers"][0]["rounds"]:
        for point in rnd.values():
            point["raw_local"] = 2 * point["rps"]
    (server,) = report.summarize(results)["servers"]
    assert all(p["ratio"] == 0.5 for p in server["points"])
    assert not server["checks"]["ratio_c32"]["ok"]


def test_c1_is_compared_with_the_raw_batch_1_passes_around_it():
    results = sample_results()
    rounds = results["servers"][0]["rounds"]
    rounds[0]["1"]["raw_b1_p50_ms"] = 7.0  # service 9.0: +2.0
    rounds[1]["1"]["raw_b1_p50_ms"] = 7.0  # service 9.5: +2.5
    summary = report.summarize(results)
    (server,) = summary["servers"]
    c1 = next(p for p in server["points"] if p["concurrency"] == 1)
    assert c1["raw_b1_p50_ms"] == 7.0 and c1["p50_gap_ms"] == pytest.approx(2.25)
    # the per-round pairs decide, not the full raw rounds' 8.0 ms (which would give +1.25 and pass)
    assert server["checks"]["p50_gap_c1_ms"] == {"value": pytest.approx(2.25), "ok": False}
    assert "right before and after the concurrency-1 point: 7.00 ms" in report.markdown(results, summary, None)


def test_missed_targets_are_flagged():
    results = sample_results()
    results["servers"][0]["rounds"][0]["64"] = sample_point(100, 600, errors=3)
    results["servers"][0]["rounds"][1]["64"] = sample_point(120, 600)
    checks = report.summarize(results)["servers"][0]["checks"]
    assert not checks["ratio_c64"]["ok"] and checks["errors"] == {"value": 3, "ok": False}


def statistics_median(values):
    import statistics

    return statistics.median(values)
