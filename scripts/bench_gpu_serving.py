#!/usr/bin/env python
"""cvops's serving path on a GPU without Ray: HTTP gateway + BatchingRouter + worker processes.

    python scripts/bench_gpu_serving.py [--model resnet50] [--engine torch-cuda] [--workers 4]
        [--max-batch 8] [--users 100] [--duration 20]

What runs (the same pieces as ``cvops serve``, with Ray's actor hop replaced by a process pool):

* a tiny aiohttp app in this process: ``POST /predict`` reads the body and submits
  ``(bytes, content_type, top_k)`` to a :class:`cvops.serving.BatchingRouter` (bounded queue, dynamic
  batching with max_wait 5 ms, least-loaded routing, 2 batches in flight per worker);
* ``--workers`` worker processes (spawned), each holding one ``cvops.ml.engines`` engine and one
  ``cvops.ml.inference.Predictor`` — decode, preprocess, one batched engine call, postprocess — exactly
  what an InferenceWorker actor runs; a WorkerHandle sends each batch to its process;
* a separate load-generator process: scripts/loadtest.py with ``--users`` closed-loop users POSTing
  the photo-like 640x480 JPEG of scripts/bench_serving.py.

Also prints two in-process ceilings: the engine alone on a preprocessed batch (no decode), and one
process decoding + preprocessing + running batches in a loop.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

_PRED: Any = None


def build_predictor(
    model: str, engine_name: str, max_batch: int, threads: int | None, gpu_decode: bool = False
) -> Any:
    from cvops.ml.engines import get_engine
    from cvops.ml.inference import Predictor
    from cvops.ml.presets import build_preset

    built = build_preset(model)
    engine = get_engine(engine_name)
    with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
        onnx_path = Path(f.name)
        if not engine.needs_torch_source:
            from cvops.ml.convert import convert_module

            convert_module(built.module, built.task, built.input_shape, onnx_path,
                           preprocessing=built.preprocessing, labels=built.labels)  # fmt: skip
        engine.load(
            onnx_path, torch_module_factory=lambda: built.module, max_batch=max_batch, threads=threads
        )
    gpu = None
    if gpu_decode and engine.device == "cuda":
        from cvops.ml.gpu_preprocess import GpuPreprocessor

        gpu = GpuPreprocessor(built.preprocessing)
    return Predictor(engine, built.task, built.labels, built.preprocessing, max_batch=max_batch, gpu=gpu)


def _init(model: str, engine_name: str, max_batch: int, threads: int | None, gpu_decode: bool) -> None:
    global _PRED
    if "cuda" in engine_name:  # the CPU side is PIL/numpy; many torch threads per process only contend
        import torch

        torch.set_num_threads(threads or 2)
    _PRED = build_predictor(model, engine_name, max_batch, threads, gpu_decode)


def _predict(items: list[tuple[bytes, str, int]]) -> list[dict[str, Any]]:
    return _PRED.predict_images(items)  # type: ignore[no-any-return]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessWorker:
    """A WorkerHandle whose batches run in one dedicated process."""

    def __init__(
        self, ctx: Any, model: str, engine: str, max_batch: int, threads: int | None, gpu_decode: bool
    ) -> None:
        self.pool = cf.ProcessPoolExecutor(
            1, mp_context=ctx, initializer=_init, initargs=(model, engine, max_batch, threads, gpu_decode)
        )

    async def call(self, items: list[tuple[bytes, str, int]]) -> list[dict[str, Any]]:
        from cvops.serving import WorkerDied

        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, _predict, items)
        except cf.process.BrokenProcessPool as exc:
            raise WorkerDied(str(exc)) from exc


async def serve_and_load(args: argparse.Namespace, jpeg_path: Path) -> dict[str, Any]:
    from aiohttp import web

    from cvops.errors import CvopsError, TooManyRequests
    from cvops.serving import BatchingRouter

    ctx = mp.get_context("spawn")
    workers = [
        ProcessWorker(ctx, args.model, args.engine, args.max_batch, args.threads, args.gpu_decode)
        for _ in range(args.workers)
    ]
    t0 = time.perf_counter()
    jpeg = jpeg_path.read_bytes()
    warm = [(jpeg, "image/jpeg", 5)] * args.max_batch
    await asyncio.gather(*(w.call(warm) for w in workers))  # load + first CUDA batch in every worker
    print(f"{args.workers} workers up in {time.perf_counter() - t0:.1f} s", flush=True)
    router: BatchingRouter[Any, Any] = BatchingRouter(
        workers, queue_limit=1000, max_batch=args.max_batch, max_wait_ms=5.0, timeout_s=30.0
    )

    async def predict(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            out = await router.submit((body, request.content_type, 5))
        except TooManyRequests as exc:
            return web.json_response(exc.to_dict(), status=429)
        except CvopsError as exc:
            return web.json_response(exc.to_dict(), status=exc.status)
        return web.json_response(out, status=422 if "error" in out else 200)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/predict", predict)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    url = f"http://127.0.0.1:{port}/predict"
    cmd = [sys.executable, str(ROOT / "scripts" / "loadtest.py"), "--url", url, "--file", str(jpeg_path),
           "--content-type", "image/jpeg", "--json"]  # fmt: skip
    try:
        for label, users, duration in (("warm-up", args.users, 5.0), ("measured", args.users, args.duration)):
            proc = await asyncio.create_subprocess_exec(
                *cmd, "--users", str(users), "--duration", str(duration), stdout=subprocess.PIPE
            )
            out, _ = await proc.communicate()
            res = json.loads(out)
            if label == "measured":
                res["router"] = json.loads(__import__("msgspec").json.encode(router.stats()))
                return res  # type: ignore[no-any-return]
    finally:
        await router.close()
        await runner.cleanup()
        for w in workers:
            w.pool.shutdown(wait=False, cancel_futures=True)
    raise AssertionError("unreachable")


def ceilings(args: argparse.Namespace, jpeg: bytes, seconds: float) -> dict[str, float]:
    pred = build_predictor(args.model, args.engine, args.max_batch, args.threads, args.gpu_decode)
    items = [(jpeg, "image/jpeg", 5)] * args.max_batch
    tensors = [pred.prepare(jpeg, "image/jpeg")[0] for _ in range(args.max_batch)]
    for _ in range(5):
        pred.run_batch(tensors)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pred.run_batch(tensors)
        n += len(tensors)
    engine_only = n / (time.perf_counter() - t0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pred.predict_images(items)
        n += len(items)
    full = n / (time.perf_counter() - t0)
    return {"engine_only_img_s": engine_only, "decode_preprocess_run_img_s": full}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--engine", default="torch-cuda")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="CPU engine threads (torch-cpu/onnxruntime)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--no-ceilings", action="store_true")
    ap.add_argument(
        "--cpu-decode",
        dest="gpu_decode",
        action="store_false",
        help="decode JPEGs on the CPU even for a CUDA engine (the default decodes them on the GPU)",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from bench_serving import photo_jpeg

    jpeg = photo_jpeg()
    info: dict[str, Any] = {"model": args.model, "engine": args.engine, "workers": args.workers,
                            "max_batch": args.max_batch, "users": args.users, "gpu_decode": args.gpu_decode, "cpus": os.cpu_count()}  # fmt: skip
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / "photo.jpg"
        path.write_bytes(jpeg)
        res = asyncio.run(serve_and_load(args, path))
    info["http"] = {k: res[k] for k in ("ok_rps", "p50_ms", "p95_ms", "p99_ms", "status_counts", "requests")}
    info["router_batch_sizes"] = res["router"]["batch_sizes"]
    if not args.no_ceilings:
        info["ceilings"] = ceilings(args, jpeg, 8.0)
    print(json.dumps(info, indent=2))
    h = info["http"]
    print(
        f"\n{args.model} on {args.engine}, {args.workers} workers, max_batch {args.max_batch}, {args.users} users: "
        f"{h['ok_rps']:.1f} req/s, p50 {h['p50_ms']:.1f} ms, p95 {h['p95_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
