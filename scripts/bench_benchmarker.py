#!/usr/bin/env python
"""How much does the Benchmarker's method cost?  Bare onnxruntime loop vs ``run_benchmark``, one run.

    python scripts/bench_benchmarker.py [--model mobilenet_v3_small|resnet18] [--iterations 50]

1. Exports a torchvision model with random weights to ONNX in a temp dir.
2. ``--rounds`` interleaved rounds (order alternating) of
   (a) a bare loop: ``InferenceSession.run`` at batch 1, same session options and threads, same seeded
       input, same warm-up and iteration counts, timed with ``perf_counter_ns``;
   (b) ``run_benchmark`` with only ``onnxruntime-cpu`` at batch 1.
   Prints both median p50s, their ratio and the median of the per-round ratios (goal: within 5 %).
   On a shared machine single rounds vary by ±10 %; the medians over interleaved rounds are the figure.
3. ``--repeats`` more ``run_benchmark`` calls and the spread of their p50s ((max - min) / median).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvops.bench import BenchmarkConfig, run_benchmark  # noqa: E402


def export(model_name: str, size: int, path: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    torch.onnx.export(
        model,
        (torch.randn(1, 3, size, size),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
        opset_version=17,
    )


def bare_p50(path: Path, x: np.ndarray, threads: int, warmup: int, iterations: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {name: x})
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        sess.run(None, {name: x})
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.percentile(samples, 50))


def bench_p50(path: Path, cfg: BenchmarkConfig, size: int) -> float:
    res = run_benchmark(path, cfg, input_shape=[3, size, size])
    (r,) = res.results
    if not r.available:
        raise SystemExit(f"onnxruntime-cpu failed: {r.reason}")
    return r.batches[0].latency.p50_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v3_small", choices=["mobilenet_v3_small", "resnet18"])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    cfg = BenchmarkConfig(
        engines=["onnxruntime-cpu"],
        batch_sizes=[1],
        warmup=args.warmup,
        iterations=args.iterations,
        threads=args.threads,
        max_seconds_per_engine=None,
    )
    # the same seeded batch-1 input run_benchmark uses
    x = np.random.default_rng([cfg.seed, 1, 1]).standard_normal((1, 3, args.image_size, args.image_size))
    x = x.astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="cvops-bench-") as tmp:
        path = Path(tmp) / f"{args.model}.onnx"
        export(args.model, args.image_size, path)
        bare: list[float] = []
        bench: list[float] = []
        for i in range(args.rounds):
            pair = [
                ("bare", lambda: bare_p50(path, x, args.threads, args.warmup, args.iterations)),
                ("bench", lambda: bench_p50(path, cfg, args.image_size)),
            ]
            for label, fn in pair if i % 2 == 0 else pair[::-1]:
                (bare if label == "bare" else bench).append(fn())
        repeats = [bench_p50(path, cfg, args.image_size) for _ in range(args.repeats)]

    b50, r50 = statistics.median(bare), statistics.median(bench)
    ratio = r50 / b50
    paired = statistics.median(b / a for a, b in zip(bare, bench, strict=True))
    spread = (max(repeats) - min(repeats)) / statistics.median(repeats)
    print(f"model {args.model} {args.image_size}x{args.image_size}, batch 1, threads {args.threads}, "
          f"warmup {args.warmup}, iterations {args.iterations}, {args.rounds} interleaved rounds")  # fmt: skip
    print(f"{'round':>5} {'bare p50 ms':>12} {'run_benchmark p50 ms':>21} {'ratio':>7}")
    for i, (a, b) in enumerate(zip(bare, bench, strict=True)):
        print(f"{i:>5} {a:>12.3f} {b:>21.3f} {b / a:>7.3f}")
    print(f"median: bare {b50:.3f} ms, run_benchmark {r50:.3f} ms, ratio {ratio:.3f} "
          f"({'within' if abs(ratio - 1) <= 0.05 else 'OUTSIDE'} 5 %); median of per-round ratios {paired:.3f}")  # fmt: skip
    print(f"repeatability: {args.repeats} run_benchmark p50s {[round(v, 3) for v in repeats]} ms, "
          f"spread {100 * spread:.1f} %")  # fmt: skip


if __name__ == "__main__":
    main()
