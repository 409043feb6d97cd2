"""Utilisation against the limit: how much of the CPU's peak arithmetic an engine or the service achieves.

    python -m benchmarks.utilisation [--model-dir models/drug-review-sentiment/1] [--seconds 10]

Operations per sequence are counted from the ONNX graph, not assumed: the graph's inputs are fixed to batch 1 and a
token length, onnxruntime's symbolic shape inference gives every tensor's shape, and each matrix product counts
2·M·N·K operations (MatMul, Gemm, MatMulInteger; batched products times their batch dimensions), attention's two
products included. Products are polynomials of degree 2 in the length (attention: L², the rest: L), so three
lengths give the exact polynomial and a review of any length is counted exactly (`OpCounter`). MatMulInteger
counts as int8 work, the rest as floating point. Element-wise work (softmax, GELU, layer norms) is not counted: it is
a few per cent of the products here and does not run on the matrix units.

The peak (`peak`) is per core per cycle from the instruction set /proc/cpuinfo lists and the microarchitecture,
times the cores this process may use, times the clock:
- fp32: 2 FMA pipes x (datapath bits / 32) lanes x 2 (multiply and add). AVX2 and AMD Zen 2-4 (AVX-512 is split
  into two 256-bit halves): 256-bit, 32 FLOP/cycle; Intel AVX-512 servers and Zen 5: 512-bit, 64.
- int8: VNNI (vpdpbusd: 4 multiply-adds per 32-bit lane) 4x fp32; without VNNI (vpmaddubsw + vpmaddwd) 2x fp32.
- bf16: AVX512-BF16 (vdpbf16ps: 2 per lane) 2x fp32; AMX tiles: 1024 bf16 and 2048 int8 multiply-adds per cycle.
- clock: measured by a tight loop of dependent integer adds (1 per cycle) when a C compiler is here, else
  /proc/cpuinfo's `cpu MHz` (on a VM: the nominal clock, not the boost). Each peak is also measured by a tight loop
  of independent FMA / VNNI / BF16 dot-product instructions on one core (`measure_peaks`), which checks the table.
An engine's share: sequences/s x sum over kinds of (ops per sequence / peak of that kind), i.e. the fraction of the
time its products would take at peak; OpenVINO's fp32 graph computed in bf16 counts against the bf16 peak.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRODUCTS = {"MatMul": "fp32", "Gemm": "fp32", "FusedMatMul": "fp32", "MatMulInteger": "int8"}


# ---- operations per sequence, from the graph ----


def matmul_ops(path: Path | str, length: int, batch: int = 1) -> dict[str, int]:
    """2·M·N·K summed over the graph's matrix products at inputs [batch, length], by kind (fp32, int8)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(path))
    for graph_input in model.graph.input:
        for dim, value in zip(graph_input.type.tensor_type.shape.dim, (batch, length)):
            dim.ClearField("dim_param")
            dim.dim_value = value
    model = SymbolicShapeInference.infer_shapes(model, auto_merge=False)
    shapes: dict[str, list[int | None]] = {t.name: list(t.dims) for t in model.graph.initializer}
    for info in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
    ops = {"fp32": 0, "int8": 0}
    for node in model.graph.node:
        kind = PRODUCTS.get(node.op_type)
        if kind is None:
            continue
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not a or not b or None in a or None in b:
            raise ValueError(f"{path}: no static shape for {node.op_type} {node.name} at length {length}: {a} x {b}")
        ops[kind] += product_ops(node.op_type, a, b, {x.name: x.i for x in node.attribute})
    return ops


def product_ops(op_type: str, a: list[int], b: list[int], attributes: dict[str, int] | None = None) -> int:
    """2·M·N·K of one matrix product (numpy matmul broadcasting; Gemm's transA / transB)."""
    attributes = attributes or {}
    if op_type == "Gemm":
        m, k = (a[1], a[0]) if attributes.get("transA") else (a[0], a[1])
        n = b[0] if attributes.get("transB") else b[1]
        return 2 * m * n * k
    if op_type == "FusedMatMul":
        a = a[:-2] + a[-2:][::-1] if attributes.get("transA") else a
        b = b[:-2] + b[-2:][::-1] if attributes.get("transB") else b
    m, k = (a[-2] if len(a) > 1 else 1), a[-1]
    n = b[-1] if len(b) > 1 else 1
    batch_a, batch_b = a[:-2], b[:-2]
    width = max(len(batch_a), len(batch_b))
    batch_a, batch_b = [1] * (width - len(batch_a)) + batch_a, [1] * (width - len(batch_b)) + batch_b
    batches = 1
    for x, y in zip(batch_a, batch_b):
        batches *= max(x, y)
    return 2 * m * n * k * batches


class OpCounter:
    """Operations per sequence of one graph at any token length: the exact degree-2 polynomial in the length from
    the counts at lengths 1, 2 and 3 (`matmul_ops`), by kind."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        at = [matmul_ops(self.path, length) for length in (1, 2, 3)]
        self.coefficients: dict[str, tuple[int, int, int]] = {}
        for kind in at[0]:
            y1, y2, y3 = (x[kind] for x in at)
            c2 = (y3 - 2 * y2 + y1) // 2  # second difference / 2
            c1 = y2 - y1 - 3 * c2
            self.coefficients[kind] = (y1 - c1 - c2, c1, c2)

    def ops(self, length: int) -> dict[str, int]:
        return {kind: c0 + c1 * length + c2 * length * length for kind, (c0, c1, c2) in self.coefficients.items()}

    def mean_ops(self, lengths: list[int]) -> dict[str, float]:
        """Mean operations per sequence over texts of these token lengths (each at its own length: no padding)."""
        totals = {kind: 0 for kind in self.coefficients}
        for length in lengths:
            for kind, value in self.ops(length).items():
                totals[kind] += value
        return {kind: total / max(1, len(lengths)) for kind, total in totals.items()}


def bert_ops(hidden: int, layers: int, intermediate: int, labels: int, length: int) -> int:
    """The analytic count for a BERT sequence classifier (pooler + linear head) at `length` tokens: per layer the
    Q, K, V and output projections (4 x 2·L·H·H), attention scores and context (2 x 2·L·L·H, all heads together)
    and the feed-forward pair (2 x 2·L·H·I); then the pooler on [CLS] (2·H·H) and the classifier (2·H·C)."""
    per_layer = 8 * length * hidden * hidden + 4 * length * length * hidden + 4 * length * hidden * intermediate
    return layers * per_layer + 2 * hidden * hidden + 2 * hidden * labels


# ---- the CPU's peak ----


@dataclass
class Cpu:
    model: str
    vendor: str
    family: int
    model_number: int
    flags: set[str]
    cores: int
    cpuinfo_mhz: float

    @property
    def isa(self) -> dict[str, bool]:
        f = self.flags
        return {"avx2": "avx2" in f, "fma": "fma" in f, "avx512f": "avx512f" in f,
                "avx512_vnni": "avx512_vnni" in f, "avx_vnni": "avx_vnni" in f, "avx512_bf16": "avx512_bf16" in f,
                "amx_bf16": "amx_bf16" in f, "amx_int8": "amx_int8" in f}


def read_cpu(text: str | None = None) -> Cpu:
    """The CPU from /proc/cpuinfo (its first processor) and the cores this process may run on."""
    if text is None:
        text = Path("/proc/cpuinfo").read_text()
    first: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            first.setdefault(key.strip(), value.strip())
    return Cpu(model=first.get("model name", "unknown CPU"), vendor=first.get("vendor_id", "?"),
               family=int(first.get("cpu family", "0") or 0), model_number=int(first.get("model", "0") or 0),
               flags=set(first.get("flags", "").split()), cores=len(os.sched_getaffinity(0)),
               cpuinfo_mhz=float(first.get("cpu MHz", "0") or 0))


def datapath_bits(cpu: Cpu) -> tuple[int, str]:
    """Width of one FMA pipe, and why: AMD before Zen 5 (family 26) splits 512-bit instructions in two halves."""
    if not cpu.isa["avx512f"]:
        return (256, "AVX2: 256-bit") if cpu.isa["avx2"] else (128, "SSE: 128-bit")
    if cpu.vendor == "AuthenticAMD" and cpu.family < 26:
        return 256, f"AVX-512 on AMD family {cpu.family} (Zen 4): two 256-bit halves"
    return 512, "AVX-512: 512-bit"


def peak(cpu: Cpu, clock_mhz: float, fma_pipes: int = 2) -> dict[str, dict[str, Any]]:
    """Ops per cycle per core and ops/s on all usable cores, by kind (fp32, int8, bf16), with the instruction each
    assumes (see the module docstring)."""
    bits, why = datapath_bits(cpu)
    fp32 = fma_pipes * (bits // 32) * 2
    isa = cpu.isa
    kinds = {"fp32": (fp32, f"FMA, {fma_pipes} pipes x {why}")}
    if isa["amx_int8"]:
        kinds["int8"] = (4096, "AMX-INT8 tiles: 2048 multiply-adds per cycle")
    elif isa["avx512_vnni"] or isa["avx_vnni"]:
        kinds["int8"] = (4 * fp32, "VNNI vpdpbusd: 4 int8 multiply-adds per 32-bit lane")
    else:
        kinds["int8"] = (2 * fp32, "no VNNI: vpmaddubsw + vpmaddwd, about 2x fp32")
    if isa["amx_bf16"]:
        kinds["bf16"] = (2048, "AMX-BF16 tiles: 1024 multiply-adds per cycle")
    elif isa["avx512_bf16"]:
        kinds["bf16"] = (2 * fp32, "AVX512-BF16 vdpbf16ps: 2 bf16 multiply-adds per 32-bit lane")
    else:
        kinds["bf16"] = (fp32, "no bf16 instructions: computed as fp32")
    return {kind: {"per_cycle_per_core": per_cycle, "instruction": what,
                   "ops_per_s": per_cycle * cpu.cores * clock_mhz * 1e6}
            for kind, (per_cycle, what) in kinds.items()}


# ---- tight loops: the clock and the per-core peaks, measured ----

LOOPS_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
volatile double sink;  /* the results are stored: the loops cannot be optimised away */
static double now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
#define N 200000000L
static double clock_loop(void) {  /* 8 dependent adds per iteration: 8 cycles */
  long x = 0; double t = now();
  for (long i = 0; i < N / 8; i++)
    __asm__ volatile("add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0"
                     : "+r"(x));
  sink = x;
  return N / (now() - t);  /* adds (cycles) per second */
}
#define REP 20000000L
#if defined(__AVX512F__)
#define V __m512
#define FMA(a) a = _mm512_fmadd_ps(a, m, a)
#define LANES 16
#define SETV(x) _mm512_set1_ps(x)
#else
#define V __m256
#define FMA(a) a = _mm256_fmadd_ps(a, m, a)
#define LANES 8
#define SETV(x) _mm256_set1_ps(x)
#endif
static double fp32_loop(float *out) {  /* 12 independent FMA chains */
  V m = SETV(0.999999f), a0 = SETV(1), a1 = SETV(2), a2 = SETV(3), a3 = SETV(4), a4 = SETV(5), a5 = SETV(6),
    a6 = SETV(7), a7 = SETV(8), a8 = SETV(9), a9 = SETV(10), a10 = SETV(11), a11 = SETV(12);
  double t = now();
  for (long i = 0; i < REP; i++) { FMA(a0); FMA(a1); FMA(a2); FMA(a3); FMA(a4); FMA(a5); FMA(a6); FMA(a7); FMA(a8);
    FMA(a9); FMA(a10); FMA(a11); __asm__ volatile("" ::: "memory"); }
  double s = now() - t;
  V sum = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11; sink = ((float *)&sum)[0]; (void)out;
  return 12.0 * REP * LANES * 2 / s;
}
#if defined(__AVX512VNNI__)
/* inline asm: a compiler folds the intrinsic on values it can see */
#define DP(a) __asm__("vpdpbusd %2, %1, %0" : "+v"(a) : "v"(u), "v"(w))
static double int8_loop(int *out) {
  __m512i u = _mm512_set1_epi8(1), w = _mm512_set1_epi8(2), a0 = u, a1 = u, a2 = u, a3 = u, a4 = u, a5 = u, a6 = u,
    a7 = u, a8 = u, a9 = u, a10 = u, a11 = u;
  double t = now();
  for (long i = 0; i < REP; i++) { DP(a0); DP(a1); DP(a2); DP(a3); DP(a4); DP(a5); DP(a6); DP(a7); DP(a8); DP(a9);
    DP(a10); DP(a11); __asm__ volatile("" ::: "memory"); }
  double s = now() - t;
  __m512i sum = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11; sink = _mm512_reduce_add_epi32(sum); (void)out;
  return 12.0 * REP * 64 * 2 / s;  /* 64 int8 multiply-adds per instruction */
}
#endif
#if defined(__AVX512BF16__)
#define BF(a) __asm__("vdpbf16ps %2, %1, %0" : "+v"(a) : "v"(p), "v"(q))
static double bf16_loop(float *out) {
  __m512 p = _mm512_set1_ps(1), q = p;
  __m512 a0 = _mm512_set1_ps(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0,
    a10 = a0, a11 = a0;
  double t = now();
  for (long i = 0; i < REP; i++) { BF(a0); BF(a1); BF(a2); BF(a3); BF(a4); BF(a5); BF(a6); BF(a7); BF(a8); BF(a9);
    BF(a10); BF(a11); __asm__ volatile("" ::: "memory"); }
  double s = now() - t;
  __m512 sum = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11; sink = ((float *)&sum)[0]; (void)out;
  return 12.0 * REP * 32 * 2 / s;  /* 32 bf16 multiply-adds per instruction */
}
#endif
int main(void) {
  float f; int k; double best;
  best = 0; for (int r = 0; r < 5; r++) { double x = clock_loop(); if (x > best) best = x; } printf("clock_hz %.0f\n", best);
  best = 0; for (int r = 0; r < 3; r++) { double x = fp32_loop(&f); if (x > best) best = x; } printf("fp32 %.0f\n", best);
#if defined(__AVX512VNNI__)
  best = 0; for (int r = 0; r < 3; r++) { double x = int8_loop(&k); if (x > best) best = x; } printf("int8 %.0f\n", best);
#endif
#if defined(__AVX512BF16__)
  best = 0; for (int r = 0; r < 3; r++) { double x = bf16_loop(&f); if (x > best) best = x; } printf("bf16 %.0f\n", best);
#endif
  return 0;
}
"""


@functools.cache
def measure_loops() -> dict[str, float] | None:
    """One core's clock (Hz) and fp32 / int8 / bf16 ops/s from tight loops (best of a few runs: other work on the
    machine only slows a loop down), or None without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    with tempfile.TemporaryDirectory(prefix="bertserve-peak-") as work:
        source, binary = Path(work) / "loops.c", Path(work) / "loops"
        source.write_text(LOOPS_C)
        built = subprocess.run([compiler, "-O2", "-march=native", "-o", str(binary), str(source)],
                               capture_output=True, text=True, check=False)
        if built.returncode != 0:
            return None
        out = subprocess.run([str(binary)], capture_output=True, text=True, check=False, timeout=120).stdout
    return {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if len(line.split()) == 2}


def machine_peak(measure: bool = True) -> dict[str, Any]:
    """The CPU, its clock (measured, else /proc/cpuinfo's) and the peaks by kind: from the table at that clock, and
    measured on one core x cores where the loops ran."""
    cpu = read_cpu()
    loops = measure_loops() if measure else None
    if loops and loops.get("clock_hz"):
        clock_mhz, clock_source = loops["clock_hz"] / 1e6, "measured: a loop of dependent adds on one core"
    else:
        clock_mhz, clock_source = cpu.cpuinfo_mhz, "/proc/cpuinfo cpu MHz (nominal on a VM)"
    peaks = peak(cpu, clock_mhz)
    for kind, figures in peaks.items():
        if loops and kind in loops:
            figures["measured_ops_per_s"] = loops[kind] * cpu.cores
            figures["measured_per_cycle_per_core"] = round(loops[kind] / (clock_mhz * 1e6), 1)
    return {"cpu": cpu.model, "vendor": cpu.vendor, "family": cpu.family, "model": cpu.model_number,
            "cores": cpu.cores, "isa": cpu.isa, "clock_mhz": round(clock_mhz), "clock_source": clock_source,
            "cpuinfo_mhz": cpu.cpuinfo_mhz, "peaks": peaks}


def peak_kind(precision: str) -> dict[str, str]:
    """Which peak each kind of product of an engine runs against: an INT8 artifact's MatMulInteger on int8, its
    remaining fp32 products on fp32; an engine computing in bf16 (OpenVINO's default here) all on bf16."""
    if precision == "bf16":
        return {"fp32": "bf16", "int8": "int8"}
    return {"fp32": "fp32", "int8": "int8"}


def share(sequences_per_s: float, ops_per_sequence: dict[str, float], precision: str,
          peaks: dict[str, dict[str, Any]]) -> float:
    """The fraction of the CPU's peak: the time the products of sequences_per_s sequences take at peak, per second."""
    against = peak_kind(precision)
    return sequences_per_s * sum(ops / peaks[against[kind]]["ops_per_s"] for kind, ops in ops_per_sequence.items()
                                 if ops)


def describe(version_dir: Path, engines: dict[str, tuple[str, str]], precisions: dict[str, str],
             lengths: list[int], measure: bool = True) -> dict[str, Any]:
    """What bench.py records: the machine's peaks and each engine's mean operations per sequence over the texts'
    token lengths (engines: key -> (provider, artifact file); precisions: key -> what it computes in)."""
    counters: dict[str, OpCounter] = {}
    out: dict[str, Any] = {"machine": machine_peak(measure), "engines": {}, "tokens_mean": sum(lengths) / len(lengths)}
    for key, (_, artifact) in engines.items():
        counter = counters.setdefault(artifact, OpCounter(version_dir / artifact))
        out["engines"][key] = {"artifact": artifact, "precision": precisions.get(key, "fp32"),
                               "ops_per_sequence": counter.mean_ops(lengths)}
    return out


def markdown(utilisation: dict[str, Any], engine_rates: dict[str, float],
             services: list[tuple[str, str, float]], cpu_rates: dict[str, float] | None = None) -> str:
    """The report's table: each engine's limit and each service's best rate as operations/s and share of the peak
    (engine_rates: key -> sequences/s; services: (label, engine key, requests/s)); with cpu_rates (key -> sequences
    per CPU-second the process used), also the share of the peak per CPU-second: what the engine makes of the time it
    gets, whatever else runs on the machine."""
    m = utilisation["machine"]
    peaks = m["peaks"]
    isa = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["isa"].items())
    lines = [
        (f"CPU: {m['cpu']} (family {m['family']} model {m['model']}), {m['cores']} cores, {isa}; clock "
        f"{m['clock_mhz']} MHz ({m['clock_source']}; /proc/cpuinfo says {m['cpuinfo_mhz']:.0f})."), "",
        "| peak | per cycle per core (table) | instruction | all cores, Gops/s (table) | measured loop, Gops/s |",
        "|---|---|---|---|---|",
    ]
    for kind, p in peaks.items():
        measured = f"{p['measured_ops_per_s'] / 1e9:.0f} ({p['measured_per_cycle_per_core']}/cycle)" \
            if "measured_ops_per_s" in p else "-"
        lines.append(f"| {kind} | {p['per_cycle_per_core']} | {p['instruction']} | {p['ops_per_s'] / 1e9:.0f} "
                     f"| {measured} |")
    per_cpu = ["share of one core's peak per CPU-second"] if cpu_rates else []
    lines += ["", (f"Operations per sequence counted from each graph at the texts' own token lengths (mean "
              f"{utilisation['tokens_mean']:.1f} tokens, no padding)."), "",
              "| " + " | ".join(["engine or service", "artifact (computes in)", "sequences/s",
                                 "ops per sequence (fp32 + int8), M", "achieved Gops/s", "share of peak", *per_cpu])
              + " |", "|---" * (6 + len(per_cpu)) + "|"]
    rows = [(key, key, rate) for key, rate in engine_rates.items()] + list(services)
    cores = m["cores"]
    for label, key, rate in rows:
        engine = utilisation["engines"].get(key)
        if engine is None or not rate:
            continue
        ops = engine["ops_per_sequence"]
        mix = " + ".join(f"{ops[k] / 1e6:.0f}" for k in ("fp32", "int8"))
        fraction = share(rate, ops, engine["precision"], peaks)
        extra = []
        if cpu_rates:
            own = (cpu_rates or {}).get(label)
            extra = [f"{share(own, ops, engine['precision'], peaks) * cores:.1%}" if own else "-"]
        lines.append("| " + " | ".join([label, f"{engine['artifact']} ({engine['precision']})", f"{rate:.1f}", mix,
                                        f"{rate * sum(ops.values()) / 1e9:.1f}", f"{fraction:.1%}", *extra]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--model-dir", type=Path, default=root / "models" / "drug-review-sentiment" / "1")
    parser.add_argument("--texts", type=int, default=512, help="review texts timed per engine (default 512)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per call, length-sorted (default 16)")
    args = parser.parse_args(argv)
    import time

    from app.engine import available, open_engine
    from app.repository import TOKENIZER_FILE, read_config
    from app.tokenizer import TextTokenizer, pad
    from benchmarks.common import load_reviews

    config = read_config(args.model_dir)
    tokenizer = TextTokenizer(args.model_dir / TOKENIZER_FILE, config.max_length)
    texts = load_reviews()[: args.texts]
    encoded = sorted(tokenizer.encode(texts), key=lambda e: len(e.ids))
    lengths = [len(e.ids) for e in encoded]
    engines, precisions, rates, cpu_rates = {}, {}, {}, {}
    load = [round(x, 2) for x in os.getloadavg()]
    for provider in ("cpu", "openvino"):
        if available(provider) is not None:
            continue
        for artifact in config.artifacts_for(provider):
            key = f"{provider} {artifact.file}"
            engine = open_engine(args.model_dir, config, provider, artifact, os.cpu_count() or 1)
            batches = [encoded[k : k + args.batch] for k in range(0, len(encoded), args.batch)]
            for batch in batches[:4]:
                engine.run(*pad([e.ids for e in batch], tokenizer.pad_id))
            best, best_cpu = float("inf"), float("inf")
            for _ in range(3):  # best of 3 passes: other work on the machine only slows a pass down
                started, cpu_started = time.perf_counter(), time.process_time()
                for batch in batches:
                    engine.run(*pad([e.ids for e in batch], tokenizer.pad_id))
                best = min(best, time.perf_counter() - started)
                best_cpu = min(best_cpu, time.process_time() - cpu_started)
            engines[key], precisions[key], rates[key] = (provider, artifact.file), engine.precision, len(texts) / best
            cpu_rates[key] = len(texts) / best_cpu
            del engine
    utilisation = describe(args.model_dir, engines, precisions, lengths)
    print(markdown(utilisation, rates, [], cpu_rates))
    print(f"engines timed with {os.cpu_count()} intra-op threads, batches of {args.batch} length-sorted, best of 3 "
          f"passes over {len(texts)} reviews (tokenization not included; per CPU-second: the process's CPU time of the "
          f"best pass, onnxruntime's multi-thread sessions do not spin); load average {load} before, "
          f"{[round(x, 2) for x in os.getloadavg()]} after")


if __name__ == "__main__":
    main()
