"""Engine plans are built once per key, even when a deployment's workers start together."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from cvops.ml.plan_cache import PlanCache, PlanKey

KEY = PlanKey(
    model_sha256="a" * 64, gpu="NVIDIA H200 sm90", runtime="tensorrt 10.9.0", profile=((32, 3, 224, 224),)
)


def _worker(root: str, log: str, out: str) -> None:
    def build() -> bytes:
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(0.3)  # long enough for the others to be waiting on the lock
        return b"PLAN" * 1000

    plan, _built = PlanCache(root).get_or_build(KEY, build)
    Path(out).write_bytes(plan)


def test_workers_starting_together_build_one_plan(tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(str(tmp_path / "plans"), str(log), str(tmp_path / f"out{i}")))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert log.read_text().count("built") == 1
    assert {(tmp_path / f"out{i}").read_bytes() for i in range(4)} == {b"PLAN" * 1000}


def test_the_key_names_everything_a_plan_depends_on(tmp_path: Path) -> None:
    cache = PlanCache.beside_blobs(tmp_path / "blobs")
    assert cache.root == tmp_path / "blobs" / "engine-plans"  # beside blobs/sha256, which cvops gc sweeps
    builds: list[str] = []
    for key in (
        KEY,
        PlanKey(model_sha256="b" * 64, gpu=KEY.gpu, runtime=KEY.runtime, profile=KEY.profile),
        PlanKey(
            model_sha256=KEY.model_sha256, gpu="NVIDIA A100 sm80", runtime=KEY.runtime, profile=KEY.profile
        ),
        PlanKey(model_sha256=KEY.model_sha256, gpu=KEY.gpu, runtime="tensorrt 10.10.0", profile=KEY.profile),
        PlanKey(model_sha256=KEY.model_sha256, gpu=KEY.gpu, runtime=KEY.runtime, profile=((8, 3, 224, 224),)),
    ):
        plan, built = cache.get_or_build(
            key, lambda k=key: (builds.append(k.digest()), k.digest().encode())[1]
        )
        assert built and plan == key.digest().encode()
    assert len(set(builds)) == 5
    plan, built = cache.get_or_build(KEY, lambda: b"never")
    assert not built and plan == KEY.digest().encode()


def test_a_failed_build_leaves_nothing_and_a_lost_plan_is_rebuilt(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path)

    def boom() -> bytes:
        raise RuntimeError("builder ran out of memory")

    with pytest.raises(RuntimeError):
        cache.get_or_build(KEY, boom)
    assert not cache.path(KEY).exists() and not list(tmp_path.glob("*.tmp"))
    assert cache.get_or_build(KEY, lambda: b"one") == (b"one", True)
    cache.path(KEY).unlink()
    assert cache.get_or_build(KEY, lambda: b"two") == (b"two", True)
