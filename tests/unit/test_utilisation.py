"""The utilisation report's arithmetic (benchmarks/utilisation.py): matrix-product operations counted from a real
exported graph equal the analytic 2·M·N·K sum of its BERT config, in fp32 and after dynamic INT8 quantization; the
peak table per instruction set; the share of the peak."""

from __future__ import annotations

import pytest

from benchmarks.utilisation import OpCounter, bert_ops, matmul_ops, peak, product_ops, read_cpu, share

# The tiny checkpoint of tests/support/tiny.py: BERT, hidden 32, 2 layers, 2 heads, intermediate 64, 3 labels.
TINY = {"hidden": 32, "layers": 2, "intermediate": 64, "labels": 3}


def test_products_count_two_m_n_k_with_batch_dimensions_and_transposes():
    assert product_ops("MatMul", [1, 7, 32], [32, 64]) == 2 * 7 * 64 * 32
    assert product_ops("MatMul", [1, 2, 7, 16], [1, 2, 16, 7]) == 2 * 2 * 7 * 7 * 16  # attention: per head
    assert product_ops("MatMulInteger", [3, 1, 5, 8], [4, 8, 6]) == 2 * 5 * 6 * 8 * 3 * 4  # broadcast batches
    assert product_ops("Gemm", [1, 32], [3, 32], {"transB": 1}) == 2 * 1 * 3 * 32


@pytest.fixture(scope="module")
def tiny_graphs(tiny_model_repo, tmp_path_factory):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = tiny_model_repo / "tiny" / "1" / "model.onnx"
    int8 = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return fp32, int8


@pytest.mark.parametrize("length", [1, 9, 64])
def test_the_graph_count_equals_the_analytic_count_of_its_config(tiny_graphs, length):
    fp32, int8 = tiny_graphs
    expected = bert_ops(length=length, **TINY)
    assert matmul_ops(fp32, length) == {"fp32": expected, "int8": 0}
    counted = matmul_ops(int8, length)
    assert counted["int8"] > 0 and counted["fp32"] + counted["int8"] == expected  # the same products, quantized
    assert matmul_ops(fp32, length, batch=4)["fp32"] == 4 * expected


def test_the_counter_is_exact_at_any_length_and_averages_each_text_at_its_own(tiny_graphs):
    counter = OpCounter(tiny_graphs[0])
    assert counter.coefficients["fp32"][2] == 4 * TINY["layers"] * TINY["hidden"]  # attention's L² term
    assert counter.ops(37)["fp32"] == bert_ops(length=37, **TINY) == matmul_ops(tiny_graphs[0], 37)["fp32"]
    assert counter.mean_ops([4, 40])["fp32"] == (bert_ops(length=4, **TINY) + bert_ops(length=40, **TINY)) / 2


def cpuinfo(vendor: str, family: int, flags: str) -> str:
    return (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 17\n"
            f"model name\t: Test CPU\ncpu MHz\t\t: 2000.000\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\n")


@pytest.mark.parametrize(("vendor", "family", "flags", "expected"), [
    # Zen 4: AVX-512 in two 256-bit halves; VNNI and AVX512-BF16
    ("AuthenticAMD", 25, "avx2 fma avx512f avx512_vnni avx512_bf16", {"fp32": 32, "int8": 128, "bf16": 64}),
    # Zen 5: a full 512-bit datapath
    ("AuthenticAMD", 26, "avx2 fma avx512f avx512_vnni avx512_bf16", {"fp32": 64, "int8": 256, "bf16": 128}),
    # An Intel Xeon with AMX
    ("GenuineIntel", 6, "avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8",
     {"fp32": 64, "int8": 4096, "bf16": 2048}),
    # AVX2 only: no VNNI, no bf16
    ("GenuineIntel", 6, "avx2 fma", {"fp32": 32, "int8": 64, "bf16": 32}),
])
def test_the_peak_per_cycle_follows_the_instruction_set(vendor, family, flags, expected):
    cpu = read_cpu(cpuinfo(vendor, family, flags))
    assert cpu.family == family and cpu.cpuinfo_mhz == 2000.0
    peaks = peak(cpu, clock_mhz=2000.0)
    assert {kind: p["per_cycle_per_core"] for kind, p in peaks.items()} == expected
    assert peaks["fp32"]["ops_per_s"] == expected["fp32"] * cpu.cores * 2000e6


def test_the_share_is_the_time_the_products_take_at_peak():
    peaks = {"fp32": {"ops_per_s": 100e9}, "int8": {"ops_per_s": 400e9}, "bf16": {"ops_per_s": 200e9}}
    ops = {"fp32": 1e9, "int8": 4e9}  # an INT8 graph with some products left in fp32: 10 ms + 10 ms at peak
    assert share(10, ops, "int8", peaks) == pytest.approx(0.2)
    assert share(10, {"fp32": 2e9, "int8": 0}, "bf16", peaks) == pytest.approx(0.1)  # OpenVINO computing in bf16
