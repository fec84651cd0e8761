#!/usr/bin/env python
"""A cvops deployment through the Open Inference Protocol, beside its own /predict, at equal concurrency.

    python scripts/bench_oip.py --url http://127.0.0.1:8080 --token JWT --deployment DEP \\
        [--image img.jpg] [--concurrency 1,2,4,8,16,32,64,128] [--duration 10] [--input bytes|tensor]

- Where NVIDIA's ``perf_analyzer`` runs (its PyPI wheel ``perf-analyzer`` needs glibc >= 2.38, so a
  GPU host such as the H200 one): perf_analyzer at each concurrency against ``/v2/models/DEP``, its
  throughput and latency table printed as it reports it (``--input-data``: the image as ``image_bytes``,
  or a zero tensor for ``--input tensor``; both inputs are optional in the model's config).
- Otherwise it says so and runs tritonclient's own load instead: ``c`` closed-loop users of
  ``tritonclient.http.aio`` sending the same request for ``--duration`` seconds.
- Beside either: ``scripts/loadtest.py``'s ``run_load`` at the same concurrency, POSTing the same JPEG to
  ``/api/v1/deployments/DEP/predict``.

Throughput is answered requests per second (one image each); latency percentiles are of 2xx answers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from loadtest import LoadResult, run_load  # noqa: E402


@dataclass
class Row:
    tool: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int

    def line(self) -> str:
        return (
            f"{self.tool:<14} {self.concurrency:>5} {self.rps:>10.1f} {self.p50_ms:>9.1f} {self.p99_ms:>9.1f}"
            f" {self.errors:>7}"
        )


HEADER = f"{'tool':<14} {'conc':>5} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}"


def _synthetic_jpeg() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _metadata(url: str, token: str, dep: str) -> dict[str, object]:
    import tritonclient.http as http

    client = http.InferenceServerClient(url.split("://", 1)[-1])
    meta: dict[str, object] = client.get_model_metadata(dep, headers={"Authorization": f"Bearer {token}"})
    return meta


def _tensor_shape(meta: dict[str, object]) -> list[int]:
    inputs = meta["inputs"]
    assert isinstance(inputs, list)
    return [int(d) for d in inputs[0]["shape"][1:]]


# ------------------------------------------------------------------------------------ perf_analyzer


def perf_analyzer(
    binary: str, url: str, token: str, dep: str, meta: dict[str, object], image: bytes, mode: str,
    levels: list[int], duration: float,
) -> list[Row]:  # fmt: skip
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "input.json"
        if mode == "bytes":
            entry: dict[str, object] = {
                "image_bytes": {"b64": base64.b64encode(image).decode(), "shape": [1]}
            }
        else:
            inputs = meta["inputs"]
            assert isinstance(inputs, list)
            shape = _tensor_shape(meta)
            entry = {inputs[0]["name"]: {"content": [0.0] * int(np.prod(shape)), "shape": shape}}
        data.write_text(json.dumps({"data": [entry]}))
        for c in levels:
            out = Path(tmp) / f"c{c}.csv"
            cmd = [
                binary, "-m", dep, "-u", url.split("://", 1)[-1], "-i", "http",
                "-H", f"Authorization: Bearer {token}", "--input-data", str(data),
                "--concurrency-range", f"{c}:{c}", "--measurement-interval", str(int(duration * 1000)),
                "--percentile", "99", "-f", str(out),
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not out.exists():
                print(f"perf_analyzer failed at concurrency {c}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
                continue
            with out.open() as f:
                for rec in csv.DictReader(f):
                    us = [float(rec.get(k) or 0) for k in ("p50 latency", "p99 latency")]
                    rows.append(
                        Row("perf_analyzer", c, float(rec["Inferences/Second"]), us[0] / 1e3, us[1] / 1e3, 0)
                    )
    return rows


# ------------------------------------------------------------------------------ tritonclient's load


async def triton_load(
    url: str, token: str, dep: str, meta: dict[str, object], image: bytes, mode: str, users: int,
    duration: float,
) -> Row:  # fmt: skip
    import tritonclient.http as http
    import tritonclient.http.aio as aio

    headers = {"Authorization": f"Bearer {token}"}
    if mode == "bytes":
        inp = http.InferInput("image_bytes", [1], "BYTES")
        inp.set_data_from_numpy(np.array([image], dtype=np.object_))
    else:
        inputs = meta["inputs"]
        assert isinstance(inputs, list)
        shape = [1, *_tensor_shape(meta)]
        inp = http.InferInput(inputs[0]["name"], shape, "FP32")
        inp.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
    client = aio.InferenceServerClient(url.split("://", 1)[-1], conn_limit=max(users, 1), conn_timeout=120.0)
    lat: list[float] = []
    errors = 0
    end = time.perf_counter() + duration

    async def user() -> None:
        nonlocal errors
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                await client.infer(dep, [inp], headers=headers)
            except Exception:  # noqa: BLE001 - 429s and timeouts are counted, not fatal
                errors += 1
                continue
            lat.append((time.perf_counter() - t0) * 1e3)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(user() for _ in range(users)))
    finally:
        await client.close()
    wall = time.perf_counter() - start
    p50, p99 = (float(v) for v in np.percentile(lat, [50, 99])) if lat else (0.0, 0.0)
    return Row("tritonclient", users, (len(lat) + errors) / wall, p50, p99, errors)


def _predict_row(res: LoadResult) -> Row:
    return Row("loadtest", res.users, res.throughput_rps, res.p50_ms, res.p99_ms, res.requests - res.ok)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="the server root, e.g. http://127.0.0.1:8080")
    ap.add_argument("--token", required=True, help="a JWT (any role)")
    ap.add_argument("--deployment", required=True, help="the deployment id (the protocol's model name)")
    ap.add_argument("--image", type=Path, help="a JPEG (default: a synthetic 640x480 one)")
    ap.add_argument("--concurrency", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    ap.add_argument("--input", choices=("bytes", "tensor"), default="bytes",
                    help="the OIP input: the JPEG as image_bytes (as /predict) or a preprocessed FP32 tensor")  # fmt: skip
    ap.add_argument("--perf-analyzer", default=shutil.which("perf_analyzer"), help="its binary")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    image = args.image.read_bytes() if args.image else _synthetic_jpeg()
    url = args.url.rstrip("/")
    meta = _metadata(url, args.token, args.deployment)
    rows: list[Row] = []
    if args.perf_analyzer:
        print(f"perf_analyzer: {args.perf_analyzer}")
        rows += perf_analyzer(
            args.perf_analyzer,
            url,
            args.token,
            args.deployment,
            meta,
            image,
            args.input,
            levels,
            args.duration,
        )
    else:
        print("perf_analyzer not found (pip install perf-analyzer; it needs glibc >= 2.38): "
              "tritonclient's own load instead")  # fmt: skip
        for c in levels:
            rows.append(asyncio.run(
                triton_load(url, args.token, args.deployment, meta, image, args.input, c, args.duration)
            ))  # fmt: skip
    predict = f"{url}/api/v1/deployments/{args.deployment}/predict"
    headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "image/jpeg"}
    for c in levels:
        rows.append(
            _predict_row(asyncio.run(run_load(predict, image, headers, users=c, duration=args.duration)))
        )
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return 0
    print(f"OIP input: {args.input}; loadtest: /predict with the same JPEG ({len(image)} bytes)")
    print(HEADER)
    for r in sorted(rows, key=lambda r: (r.concurrency, r.tool)):
        print(r.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
