#!/usr/bin/env python
"""Benchmark a torchvision model (random weights) on every engine; no Ray, no HTTP.

    python scripts/gpu_benchmark.py --model resnet50 --batch-sizes 1 8 32 --iterations 50

Exports the model to ONNX (dynamic batch axis) in a temp dir, runs ``cvops.bench.run_benchmark`` over
``--engines`` (default: all; the torch engines get the same module through a factory), prints one row
per engine × batch size, then the latency and the throughput selection.  ``--json PATH`` also writes the
BenchmarkResult as JSON.  Engines this machine cannot run are listed with the reason.

The peer line: plain eager torch (fp16 weights, channels-last, cuDNN autotuner, from the same float32
numpy batch to outputs on the host) against each torch CUDA engine, measured in alternation for
``--peer-rounds`` rounds at ``--peer-batch`` (medians), so the ratio does not depend on when each ran.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvops.bench import BenchmarkConfig, run_benchmark  # noqa: E402
from cvops.ml.engines import ENGINE_NAMES, get_engine  # noqa: E402
from cvops.selection import Constraints, select  # noqa: E402


def build(model_name: str, num_classes: int) -> Any:
    import torch
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, model_name)(weights=None, num_classes=num_classes).eval()


def export(model: Any, size: int, path: Path) -> None:
    import torch

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


def peer_rounds(
    onnx: Path,
    factory: Any,
    model: Any,
    size: int,
    batch: int,
    engines: list[str],
    rounds: int,
    iterations: int,
) -> dict[str, float]:
    """img/s of each engine and of plain eager fp16 channels-last (host input), measured in alternation,
    ``rounds`` times, medians — so the ratio is not the GPU's or the host's mood at two moments."""
    import statistics

    import numpy as np
    import torch

    from cvops.ml.engines import get_engine

    torch.backends.cudnn.benchmark = True
    x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
    eager = copy.deepcopy(model).cuda().half().to(memory_format=torch.channels_last).eval()

    def eager_step() -> None:
        with torch.inference_mode():
            t = torch.from_numpy(x).cuda().half().contiguous(memory_format=torch.channels_last)
            eager(t).float().cpu()

    steps: dict[str, Any] = {"eager fp16 channels-last": eager_step}
    loaded = []
    for name in engines:
        for pinned in (False, True):
            eng = get_engine(name)
            eng.pinned = pinned  # type: ignore[attr-defined]
            eng.load(onnx, torch_module_factory=factory, input_shape=[3, size, size], batch_sizes=[batch])
            loaded.append(eng)
            steps[f"{name} ({'pinned' if pinned else 'pageable'})"] = lambda e=eng: e.run(x)
    got: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for label, step in steps.items():
            for _ in range(5):
                step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(iterations):
                step()
            torch.cuda.synchronize()
            got[label].append(batch * iterations / (time.perf_counter() - t0))
    for eng in loaded:
        eng.close()
    return {k: statistics.median(v) for k, v in got.items()}


def fmt(v: float | None, places: int = 2) -> str:
    return "-" if v is None else f"{v:.{places}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50", help="a torchvision.models builder name")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--engines", nargs="+", default=list(ENGINE_NAMES), choices=list(ENGINE_NAMES))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device-index", type=int, default=0)
    ap.add_argument("--memory-limit-mb", type=float, default=None, help="like CVOPS_GPU_MEMORY_MB")
    ap.add_argument("--max-seconds-per-engine", type=float, default=300.0)
    ap.add_argument("--max-p95-ms", type=float, default=None)
    ap.add_argument(
        "--peer-batch", type=int, default=32, help="batch size of the alternating peer comparison"
    )
    ap.add_argument(
        "--peer-rounds", type=int, default=5, help="rounds of the alternating peer comparison (0: none)"
    )
    ap.add_argument("--json", type=Path, default=None, help="write the BenchmarkResult here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)

    model = build(args.model, args.num_classes)
    state = copy.deepcopy(model.state_dict())

    def factory() -> Any:  # a fresh module with the exported weights
        m = build(args.model, args.num_classes)
        m.load_state_dict(state)
        return m

    cfg = BenchmarkConfig(
        engines=args.engines,
        batch_sizes=args.batch_sizes,
        warmup=args.warmup,
        iterations=args.iterations,
        threads=args.threads,
        max_seconds_per_engine=args.max_seconds_per_engine,
        constraints=Constraints(max_p95_ms=args.max_p95_ms),
    )
    last = [0.0]

    def progress(p: dict[str, Any]) -> None:
        if p["phase"] == "done" or time.monotonic() - last[0] > 5:
            last[0] = time.monotonic()
            print(f"  .. {p['engine']} batch {p['batch_size']}: {p['iterations_done']}/{p['iterations_total']}",
                  file=sys.stderr, flush=True)  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="cvops-gpu-bench-") as tmp:
        path = Path(tmp) / f"{args.model}.onnx"
        t0 = time.perf_counter()
        export(model, args.image_size, path)
        print(
            f"exported {args.model} to ONNX ({path.stat().st_size / 2**20:.1f} MB) in {time.perf_counter() - t0:.1f} s"
        )
        res = run_benchmark(
            path,
            cfg,
            input_shape=[3, args.image_size, args.image_size],
            torch_module_factory=factory,
            progress=progress,
            device_index=args.device_index,
            memory_limit_mb=args.memory_limit_mb,
        )
        cuda = [e for e in args.engines if e.startswith("torch-cuda") and get_engine(e).available()[0]]
        if args.peer_rounds and cuda:
            peer = peer_rounds(
                path, factory, model, args.image_size, args.peer_batch, cuda, args.peer_rounds, 30
            )
            base = peer["eager fp16 channels-last"]
            print(
                f"alternating comparison at batch {args.peer_batch}, {args.peer_rounds} rounds, median img/s:"
            )
            for label, ips in peer.items():
                print(f"  {label:<36}{ips:>10.1f}  {ips / base:.2f}x eager")

    m = res.machine
    print(f"machine: {m.get('gpu', 'no GPU')} | {m.get('platform')} | onnxruntime {m.get('onnxruntime')} "
          f"{m.get('onnxruntime_providers')} | torch {m.get('torch')}")  # fmt: skip
    head = (f"{'engine':<22}{'batch':>6}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'img/s':>10}{'cv':>7}"
            f"{'build s':>9}{'mem MB':>9}{'GPU %':>7}{'max diff':>10}{'top1':>6}  notes")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in res.results:
        ag = r.agreement
        diff = "-" if ag is None or ag.max_abs_diff is None else f"{ag.max_abs_diff:.1e}"
        top1 = "-" if ag is None else f"{ag.top1_agreement:.2f}"
        if not r.batches:
            print(f"{r.engine:<22}{'-':>6}{'':>47}{fmt(r.build_time_s):>9}{'':>16}{diff:>10}{top1:>6}  "
                  f"{'UNAVAILABLE: ' + r.reason if not r.available else ''}")  # fmt: skip
        for b in r.batches:
            lat = b.latency
            notes = [] if r.available else [f"FAILED: {r.reason}"]
            notes += ["unstable"] if lat.unstable else []
            notes += ["truncated"] if b.truncated else []
            print(f"{r.engine:<22}{b.batch_size:>6}{lat.p50_ms:>10.3f}{lat.p95_ms:>10.3f}{lat.p99_ms:>10.3f}"
                  f"{b.throughput_ips:>10.1f}{lat.cv:>7.3f}{fmt(r.build_time_s):>9}{b.memory_mb:>9.0f}"
                  f"{fmt(b.gpu_util_percent, 0):>7}{diff:>10}{top1:>6}  {' '.join(notes)}")  # fmt: skip
        for s in r.skipped_batches:
            print(f"{r.engine:<22}{s.batch_size:>6}  skipped: {s.reason}")
    for objective in ("latency", "throughput"):
        sel = select(res.results, cfg.constraints, objective)
        print(
            f"selection ({objective}): {sel.selected} at batch {sel.selected_batch}; eligible {sel.eligible}"
        )
    if args.json:
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(res), indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
