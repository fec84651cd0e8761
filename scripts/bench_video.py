#!/usr/bin/env python
"""Video detection through a real ``cvops serve``: frames/s of one mp4, one worker against a pool.

    python scripts/bench_video.py [--frames 60] [--size 640x480] [--preset yolov8n] [--image-size 640]
        [--workers 1 2] [--engine onnxruntime-cpu] [--repeats 3]

Makes its own mp4 (H.264 if PyAV's encoder has it, else MPEG-4 Part 2; moving shapes on a gradient),
starts ``cvops serve`` (tests/e2e/server.py) in a temporary data dir, builds the preset (random
weights), and for each ``--workers`` value deploys it and POSTs the video ``--repeats`` times, printing
frames/s (video frames / wall time of the request, best and median).  With one worker the worker
decodes and runs the whole video; with more, the gateway decodes it once and spreads the frames over the
workers (issue 14).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_mp4(frames: int, width: int, height: int, fps: int = 30) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        try:
            stream = out.add_stream("libx264", rate=fps)
        except (av.FFmpegError, ValueError):
            stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 96)], -1).astype(np.uint8)
        for i in range(frames):
            img = base.copy()
            x, y = (40 + 7 * i) % (width - 120), (30 + 4 * i) % (height - 90)
            img[y : y + 90, x : x + 120] = (230, 40, 40)
            img[height - y - 60 : height - y, width - x - 80 : width - x] = (30, 200, 60)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def post(url: str, body: bytes, token: str) -> tuple[int, float]:
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "video/mp4", "Authorization": f"Bearer {token}"},
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as resp:
        import json

        got = json.loads(resp.read())
    return len(got["frames"]), time.perf_counter() - t0


def main() -> int:
    from tests.e2e.server import Server, request

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--preset", default="yolov8n")
    ap.add_argument("--image-size", type=int, default=640)
    ap.add_argument("--engine", default="onnxruntime-cpu")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    video = make_mp4(args.frames, w, h)
    print(f"mp4: {args.frames} frames {w}x{h}, {len(video) / 1e6:.2f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "cvops", CVOPS_INFERENCE_WORKERS=str(max(args.workers))).start(
            timeout=300
        )
        try:
            token = server.token()
            api = server.url + "/api/v1"
            body = {"preset": args.preset, "image_size": args.image_size, "name": "bench-video"}
            status, rec = request(server.url, "POST", "/api/v1/models/presets?wait=true", body, token=token)
            assert status in (200, 201, 202) and rec["status"] == "ready", rec
            for workers in args.workers:
                spec = {"model_id": rec["id"], "engine": args.engine, "workers": workers}
                status, dep = request(server.url, "POST", "/api/v1/deployments", spec, token=token)
                assert status == 201, dep
                url = f"{api}/deployments/{dep['id']}/predict"
                post(url, video, token)  # warm-up: sessions, caches
                rates = []
                for _ in range(args.repeats):
                    n, secs = post(url, video, token)
                    rates.append(n / secs)
                print(
                    f"{args.preset}@{args.image_size} on {args.engine}, {workers} worker(s): "
                    f"best {max(rates):.1f} frames/s, median {statistics.median(rates):.1f} frames/s"
                )
                request(server.url, "DELETE", f"/api/v1/deployments/{dep['id']}", token=token)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
