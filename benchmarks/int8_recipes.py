"""INT8 recipes that keep fp32's decisions (issue 34 item 2): each candidate built from the demo's fp32 ONNX, its
decisions against fp32's on the 379 test reviews, its raw speed against today's default, side by side.

    pip install -e '.[bench]'   # nncf, for the OpenVINO NNCF candidates only
    python benchmarks/int8_recipes.py [--version-dir models/drug-review-sentiment/1] [--work /tmp/bertserve-int8-recipes]
                                      [--rounds 5] [--threads 1] [--only NAME ...]

Resumable: each recipe's artifact and figures (agreement, flips, build seconds) are cached under --work/<recipe>/
(result.json); delete a folder to build that recipe again. Calibration and the sensitivity ranking use the 600
TRAINING reviews only: the 379 test reviews are the export gate's and never tune a recipe.

Decisions: argmax of the logits, each candidate run as served (app.engine.open_engine: onnxruntime CPU with its
served options, or OpenVINO on the CPU at its default precision) in length-sorted batches of --batch (the served
batch shape, as benchmarks/raw.py). Rate: raw sequences/s of engine calls on pre-tokenized batches (tokenization
left out: it is the same for every recipe), interleaved batch by batch (each batch runs on every candidate in turn,
the order rotating) so all candidates see the same load on a shared machine; the ratio to today's default is the
median of the per-round ratios. Every candidate runs with the same --threads.

`X + guard`: recipe X's artifact served with the INT8 guard (app.guard, --guard-margin, default 0.05): rows whose
INT8 top-two probability margin is under the margin are run again on the fp32 graph and take its logits, timed with
that extra work (the fp32 session has the same --threads). Not cached (no artifact of its own).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.engine import cpu_name, open_engine
from app.guard import Guard
from app.lifecycle.data import demo_split
from app.repository import TOKENIZER_FILE, Artifact, read_config
from app.tokenizer import TextTokenizer, pad

DEFAULT = "default (published)"


def batches(tokenizer: TextTokenizer, texts: list[str], size: int) -> list[tuple[np.ndarray, np.ndarray, list[int]]]:
    """Length-sorted batches of `size`: (ids, mask, text indices)."""
    encoded = tokenizer.encode(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))
    out = []
    for k in range(0, len(order), size):
        part = order[k:k + size]
        ids, mask = pad([encoded[i].ids for i in part], tokenizer.pad_id)
        out.append((ids, mask, part))
    return out


def size_of(path: Path) -> int:
    """Bytes of the artifact: an OpenVINO IR is its .xml and its .bin."""
    weights = path.with_suffix(".bin")
    return path.stat().st_size + (weights.stat().st_size if path.suffix == ".xml" and weights.exists() else 0)


class Guarded:
    """An engine with the INT8 guard in front, as app.served.ServedModel.infer runs it."""

    def __init__(self, engine, guard: Guard) -> None:
        self.engine, self.guard = engine, guard

    def __str__(self) -> str:
        return f"{self.engine} + guard {self.guard.margin} on {self.guard.referee.artifact.file}"

    def run(self, ids, mask):
        return self.guard.check(self.engine.run(ids, mask), ids, mask, None)[0]


GUARDED = (DEFAULT, "ort dyn pc", "ort SQ 0.7 dyn pc", "ort SQ 0.7 dyn pc 1 fp32")


def logits_of(engine, plan, count: int, labels: int) -> np.ndarray:
    out = np.zeros((count, labels), np.float32)
    for ids, mask, part in plan:
        out[part] = engine.run(ids, mask)
    return out


class Calibration:
    """onnxruntime's CalibrationDataReader over the training texts, one text at a time: unpadded, or padded to
    `pad_to` (the histogram calibrators stack every item's tensors, which must then have one shape)."""

    def __init__(self, tokenizer: TextTokenizer, texts: list[str], names: set[str], pad_to: int = 0) -> None:
        self.items = []
        for e in tokenizer.encode(texts):
            ids = np.full((1, max(pad_to, len(e.ids))), tokenizer.pad_id, dtype=np.int64)
            ids[0, :len(e.ids)] = e.ids
            mask = (np.arange(ids.shape[1]) < len(e.ids)).astype(np.int64)[None, :]
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            self.items.append({k: v for k, v in feed.items() if k in names})
        self.position = 0

    def get_next(self):
        if self.position >= len(self.items):
            return None
        self.position += 1
        return self.items[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def quiet() -> tuple[logging.Logger, int]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    return root, level


def ort_dynamic(fp32: Path, out: Path, per_channel: bool = True, reduce_range: bool = False,
                exclude: tuple[str, ...] = (), ops=("MatMul", "Attention", "Gather", "EmbedLayerNormalization")):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root, level = quiet()
    try:
        quantize_dynamic(fp32, out, per_channel=per_channel, reduce_range=reduce_range, weight_type=QuantType.QInt8,
                         op_types_to_quantize=list(ops), nodes_to_exclude=list(exclude),
                         extra_options={"WeightSymmetric": True})
    finally:
        root.setLevel(level)


def ort_static(fp32: Path, out: Path, reader: Callable[[bool], Calibration], method: str, per_channel: bool = True,
               exclude: tuple[str, ...] = (), activation_symmetric: bool = False, dynamic_rest: bool = False):
    """QDQ static int8 (U8S8: uint8 activations, int8 symmetric weights) of the weight MatMuls. `dynamic_rest`:
    the excluded MatMuls are then quantized dynamically instead of staying fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root, level = quiet()
    try:
        prepared = out.with_name("prepared.onnx")
        if not prepared.exists():
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        extra = {"WeightSymmetric": True, "ActivationSymmetric": activation_symmetric}
        if method == "Percentile":
            extra["CalibPercentile"] = 99.999
        if method != "MinMax":  # histograms: in chunks, not every text's tensors in memory at once
            extra["CalibMaxIntermediateOutputs"] = 50
        target = out.with_name("static.onnx") if dynamic_rest else out
        quantize_static(str(prepared), str(target), reader(method != "MinMax"), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                        nodes_to_exclude=list(exclude), calibrate_method=getattr(CalibrationMethod, method),
                        extra_options=extra)
        if dynamic_rest:
            from onnxruntime.quantization import QuantType as QT
            from onnxruntime.quantization import quantize_dynamic

            quantize_dynamic(str(target), str(out), per_channel=True, weight_type=QT.QInt8,
                             op_types_to_quantize=["MatMul"], nodes_to_quantize=list(exclude),
                             extra_options={"WeightSymmetric": True})
    finally:
        root.setLevel(level)


def nncf_int8(fp32: Path, out: Path, tokenizer: TextTokenizer, texts: list[str], smooth_quant: float | None,
              ignored: tuple[str, ...] = ()):
    """NNCF post-training INT8 of the fp32 graph for OpenVINO (transformer preset: SmoothQuant on by default;
    `smooth_quant`: its alpha, -1 off), calibrated on the training texts."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    model = ov.Core().read_model(str(fp32))
    names = {port.any_name for port in model.inputs}
    items = []
    for e in tokenizer.encode(texts):
        ids = np.asarray([e.ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        items.append({k: v for k, v in feed.items() if k in names})
    advanced = None
    if smooth_quant is not None:
        advanced = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=smooth_quant))
    scope = nncf.IgnoredScope(names=list(ignored)) if ignored else None  # ONNX node names survive in the IR
    kwargs = {"ignored_scope": scope} if scope else {}
    quantized = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(items), advanced_parameters=advanced, **kwargs)
    ov.save_model(quantized, str(out))


def ort_smooth(fp32: Path, out: Path, maxima: Callable[[], dict], texts: list[str], alpha: float,
               excluded: int = 0, tokenizer: TextTokenizer | None = None, head=None) -> None:
    """SmoothQuant on the fp32 graph (app.lifecycle.quantize.smooth_quant, activation maxima from the training
    texts), then dynamic per-channel int8, the `excluded` MatMuls most sensitive after smoothing (ranked on 32
    training texts, as export ranks them) left in fp32."""
    from app.lifecycle.quantize import matmul_sensitivity, smooth_quant

    smoothed = out.with_name("smoothed.onnx")
    smooth_quant(fp32, smoothed, maxima(), alpha)
    exclude: tuple[str, ...] = ()
    if excluded:
        ranking = matmul_sensitivity(smoothed, TextTokenizer(tokenizer.path, 64), texts[:32], head)
        exclude = tuple(name for name, _ in ranking[:excluded])
    ort_dynamic(smoothed, out, exclude=exclude)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version-dir", type=Path, default=ROOT / "models/drug-review-sentiment/1")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bertserve-int8-recipes"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--only", nargs="*", help="recipes to build / time (default: all); the default always runs")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--agreement-batches", type=int, nargs="*", default=[],
                        help="also count test flips in length-sorted batches of these sizes (dynamic INT8's activation "
                             "scale is per batch, so its decisions depend on the batching); --work/flips_by_batch.json")
    parser.add_argument("--guard-margin", type=float, default=0.05, help="the guarded variants' margin (app.guard)")
    args = parser.parse_args()
    version, config = args.version_dir, read_config(args.version_dir)
    fp32 = version / "model.onnx"
    tokenizer = TextTokenizer(version / TOKENIZER_FILE, config.max_length)
    train, _ = demo_split("train")
    test, _ = demo_split("test")
    plan = batches(tokenizer, test, args.batch)
    labels = len(config.labels)
    args.work.mkdir(parents=True, exist_ok=True)

    # fp32 decisions: onnxruntime CPU on the fp32 graph, same batches.
    fp32_logits = logits_of(open_engine(version, config, "cpu", Artifact(file="model.onnx", precision="fp32",
                                                                         providers=["cpu"]), args.threads),
                            plan, len(test), labels)
    decisions = fp32_logits.argmax(1)
    fp32_probs = config.head.scores(fp32_logits)
    # The training texts too: a second, independent count of flips (the model is surer of them: fewer ties).
    train_plan = batches(tokenizer, train, args.batch)
    train_decisions = logits_of(open_engine(version, config, "cpu", Artifact(
        file="model.onnx", precision="fp32", providers=["cpu"]), args.threads), train_plan, len(train),
        labels).argmax(1)

    ranking_file = args.work / "ranking.json"
    if not ranking_file.exists():  # the export's ranking (app.lifecycle.quantize), on training texts
        from app.lifecycle.quantize import matmul_sensitivity

        short = TextTokenizer(version / TOKENIZER_FILE, 64)
        ranking_file.write_text(json.dumps(matmul_sensitivity(fp32, short, train[:32], config.head), indent=1))
    ranking = tuple(name for name, _ in json.loads(ranking_file.read_text()))
    ffn_out = tuple(n for n in ranking if "/output/dense/" in n and "attention" not in n)

    def maxima() -> dict[str, np.ndarray]:  # per-channel activation maxima on the training texts, computed once
        from app.lifecycle.quantize import activation_maxima

        kept = args.work / "maxima.json"
        if not kept.exists():
            found = activation_maxima(fp32, tokenizer, train)
            kept.write_text(json.dumps({name: value.tolist() for name, value in found.items()}))
        return {name: np.asarray(value, np.float32) for name, value in json.loads(kept.read_text()).items()}

    def reader(padded: bool) -> Calibration:
        import onnx

        names = {i.name for i in onnx.load(str(fp32), load_external_data=False).graph.input}
        return Calibration(tokenizer, train, names, config.max_length if padded else 0)

    # name: (file, provider, builder(out path))
    recipes: dict[str, tuple[str, str, Callable[[Path], None] | None]] = {
        DEFAULT: ("model.int8.onnx", "cpu", None),
        "ort dyn pc": ("model.onnx", "cpu", lambda o: ort_dynamic(fp32, o)),
        "ort dyn pc reduce_range": ("model.onnx", "cpu", lambda o: ort_dynamic(fp32, o, reduce_range=True)),
        "ort dyn pt": ("model.onnx", "cpu", lambda o: ort_dynamic(fp32, o, per_channel=False)),
        "ort dyn pc 4 fp32": ("model.onnx", "cpu", lambda o: ort_dynamic(fp32, o, exclude=ranking[:4])),
        "ort dyn pc 8 fp32": ("model.onnx", "cpu", lambda o: ort_dynamic(fp32, o, exclude=ranking[:8])),
        "ort dyn pc 12 fp32": ("model.onnx", "cpu", lambda o: ort_dynamic(fp32, o, exclude=ranking[:12])),
        "ort dyn pc MatMul only": ("model.onnx", "cpu", lambda o: ort_dynamic(fp32, o, ops=("MatMul",))),
        **{f"ort SQ {alpha} dyn pc": ("model.onnx", "cpu", lambda o, alpha=alpha: ort_smooth(
            fp32, o, maxima, train, alpha)) for alpha in (0.5, 0.6, 0.7, 0.8)},
        **{f"ort SQ {alpha} dyn pc {k} fp32": ("model.onnx", "cpu", lambda o, alpha=alpha, k=k: ort_smooth(
            fp32, o, maxima, train, alpha, k, tokenizer, config.head)) for alpha in (0.5, 0.7) for k in (1, 2, 4)},
        "ort static MinMax pc": ("model.onnx", "cpu", lambda o: ort_static(fp32, o, reader, "MinMax")),
        "ort static Entropy pc": ("model.onnx", "cpu", lambda o: ort_static(fp32, o, reader, "Entropy")),
        "ort static Percentile pc": ("model.onnx", "cpu", lambda o: ort_static(fp32, o, reader, "Percentile")),
        "ort static MinMax pc, FFN-out fp32": ("model.onnx", "cpu",
                                               lambda o: ort_static(fp32, o, reader, "MinMax", exclude=ffn_out)),
        "ort static MinMax pc, FFN-out dyn": ("model.onnx", "cpu", lambda o: ort_static(
            fp32, o, reader, "MinMax", exclude=ffn_out, dynamic_rest=True)),
        "ort static MinMax pc, 8 fp32": ("model.onnx", "cpu",
                                         lambda o: ort_static(fp32, o, reader, "MinMax", exclude=ranking[:8])),
        "ov on ort static MinMax QDQ": ("model.onnx", "openvino", "ort static MinMax pc"),
        "ov nncf transformer (SQ default)": ("model.xml", "openvino",
                                             lambda o: nncf_int8(fp32, o, tokenizer, train, None)),
        "ov nncf transformer SQ 0.5": ("model.xml", "openvino",
                                       lambda o: nncf_int8(fp32, o, tokenizer, train, 0.5)),
        "ov nncf transformer no SQ": ("model.xml", "openvino",
                                      lambda o: nncf_int8(fp32, o, tokenizer, train, -1)),
        "ov nncf transformer, FFN-out fp32": ("model.xml", "openvino",
                                              lambda o: nncf_int8(fp32, o, tokenizer, train, None, ffn_out)),
        "ov nncf transformer, 8 fp32": ("model.xml", "openvino",
                                        lambda o: nncf_int8(fp32, o, tokenizer, train, None, ranking[:8])),
        "ov nncf transformer, FFN fp32": ("model.xml", "openvino", lambda o: nncf_int8(
            fp32, o, tokenizer, train, None, tuple(n for n in ranking if "/intermediate/" in n) + ffn_out)),
        "ov fp32 graph (bf16)": ("model.onnx", "openvino", None),
    }
    recipes |= {f"{base} + guard": (recipes[base][0], "cpu", base) for base in GUARDED}
    chosen = [n for n in recipes if not args.only or n == DEFAULT or n in args.only]

    def folder_of(name: str) -> Path:
        return args.work / "".join(c if c.isalnum() else "-" for c in name)

    def location(name: str) -> tuple[Path, str]:
        file, _, builder = recipes[name]
        if builder is None:
            return version, file
        if isinstance(builder, str):  # another recipe's artifact (on another engine, or guarded)
            return location(builder)
        return folder_of(name), file

    def open_recipe(name: str):
        where, file = location(name)
        provider = recipes[name][1]
        engine = open_engine(where, config, provider, Artifact(file=file, precision="int8", providers=[provider]),
                             args.threads)
        if not name.endswith(" + guard"):
            return engine
        referee = open_engine(version, config, "cpu", Artifact(file="model.onnx", precision="fp32",
                                                                providers=["cpu"]), args.threads)
        return Guarded(engine, Guard(args.guard_margin, referee))

    results: dict[str, dict] = {}
    for name in chosen:
        file, provider, builder = recipes[name]
        folder = folder_of(name)
        cached = folder / "result.json"
        guarded = name.endswith(" + guard")
        if not guarded and cached.exists() and "train_flips" in (known := json.loads(cached.read_text())):
            results[name] = known
            continue
        build_s = known.get("build_s", 0.0) if cached.exists() and not guarded else 0.0
        if callable(builder) and not (folder / file).exists():
            folder.mkdir(parents=True, exist_ok=True)
            print(f"building {name} ...", flush=True)
            started = time.perf_counter()
            try:
                builder(folder / file)
            except Exception as exc:  # noqa: BLE001 - record why, go on with the others
                print(f"  {name}: build failed: {exc}", flush=True)
                results[name] = {"failed": str(exc).splitlines()[0][:200]}
                continue
            build_s = time.perf_counter() - started
        elif isinstance(builder, str) and "agreement" not in results.get(builder, {}):
            print(f"  {name}: needs {builder} first", flush=True)
            continue
        where, file = location(name)
        engine = open_recipe(name)
        got = logits_of(engine, plan, len(test), labels)
        flips = int((got.argmax(1) != decisions).sum())
        moved = np.abs(config.head.scores(got) - fp32_probs)
        train_flips = int((logits_of(engine, train_plan, len(train), labels).argmax(1) != train_decisions).sum())
        results[name] = {"agreement": round(1 - flips / len(test), 4), "flips": flips,
                         "mean_prob_diff": round(float(moved.mean()), 5), "max_prob_diff": round(float(moved.max()), 4),
                         "train_flips": train_flips, "build_s": round(build_s, 1), "engine": str(engine),
                         "size_mb": round(size_of(where / file) / 1e6, 1)}
        if guarded:
            results[name]["rechecked_share"] = round(engine.guard.rechecked / engine.guard.rows, 4)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(results[name], indent=1))
        print(f"  {name}: agreement {results[name]['agreement']:.4f} ({flips} flips; {train_flips} of {len(train)} "
              f"train), mean prob diff {moved.mean():.4f}, build {build_s:.0f} s", flush=True)
    if args.agreement_batches:
        by_batch: dict[str, dict[int, int]] = {}
        plans = {size: batches(tokenizer, test, size) for size in args.agreement_batches}
        fp32_engine = open_engine(version, config, "cpu", Artifact(file="model.onnx", precision="fp32",
                                                                    providers=["cpu"]), args.threads)
        reference = {size: logits_of(fp32_engine, plans[size], len(test), labels).argmax(1) for size in plans}
        for name in (n for n in chosen if "agreement" in results.get(n, {})):
            engine = open_recipe(name)
            by_batch[name] = {size: int((logits_of(engine, plans[size], len(test), labels).argmax(1)
                                         != reference[size]).sum()) for size in plans}
            print(f"  {name}: flips by batch size {by_batch[name]}", flush=True)
        (args.work / "flips_by_batch.json").write_text(json.dumps(by_batch, indent=1))
    if args.build_only:
        return

    timed = [n for n in chosen if "failed" not in results.get(n, {"failed": 1})]
    engines = {}
    for name in timed:
        engines[name] = open_recipe(name)
    for name in timed:  # warm-up: allocations, kernel choice
        for ids, mask, _ in plan[::4]:
            engines[name].run(ids, mask)
    load = [os.getloadavg()[0]]
    rates: dict[str, list[float]] = {n: [] for n in timed}
    for r in range(args.rounds):
        spent = dict.fromkeys(timed, 0.0)
        for k, (ids, mask, _) in enumerate(plan):
            turn = (k + r) % len(timed)
            for name in timed[turn:] + timed[:turn]:
                start = time.perf_counter()
                engines[name].run(ids, mask)
                spent[name] += time.perf_counter() - start
        for name in timed:
            rates[name].append(len(test) / spent[name])
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.rounds}: load {load[-1]:.1f}", flush=True)

    base = rates[DEFAULT]
    summary = {"cpu": cpu_name(), "threads": args.threads, "batch": args.batch, "rounds": args.rounds,
               "texts": len(test), "load_1min": [round(x, 1) for x in load], "recipes": {}}
    print(f"\nCPU: {cpu_name()}; {len(test)} test reviews, batches of {args.batch} (length-sorted), "
          f"{args.threads} thread(s), {args.rounds} interleaved rounds, 1-min load {min(load):.1f}-{max(load):.1f}")
    print(f"{'recipe':38} {'agree':>7} {'flips':>5} {'seq/s':>7} {'x default':>9} {'build s':>7} {'MB':>5}")
    for name in chosen:
        res = results.get(name, {})
        if name in rates:
            res["sequences_per_s"] = round(statistics.median(rates[name]), 1)
            res["ratio"] = round(statistics.median(a / b for a, b in zip(rates[name], base)), 3)
            print(f"{name:38} {res['agreement']:7.4f} {res['flips']:5d} {res['sequences_per_s']:7.1f} "
                  f"{res['ratio']:9.3f} {res['build_s']:7.0f} {res['size_mb']:5.1f}")
        else:
            print(f"{name:38} {res.get('failed', 'not built')}")
        summary["recipes"][name] = res
    kept = args.work / f"summary-{args.threads}t.json"
    kept.write_text(json.dumps(summary, indent=1))
    print(f"\n{kept}")


if __name__ == "__main__":
    main()
