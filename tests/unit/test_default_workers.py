"""A deployment without ``workers`` gets min(CVOPS_INFERENCE_WORKERS, cores) inference workers."""

from __future__ import annotations

import os

from cvops.actors.inference import default_workers, machine_cores
from cvops.config import Settings, load_settings


def test_default_workers_is_capped_by_the_cores() -> None:
    assert default_workers(Settings(inference_workers=10), cores=2) == 2
    assert default_workers(Settings(inference_workers=10), cores=16) == 10
    assert default_workers(Settings(inference_workers=1), cores=64) == 1
    assert default_workers(Settings(inference_workers=4), cores=1) == 1
    cores = len(os.sched_getaffinity(0))
    assert machine_cores() == cores
    assert default_workers(load_settings({})) == min(10, cores)
