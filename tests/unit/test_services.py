"""The gateway's typed services: 503 until boot is done, the store its own projections see, the keys
make_app fills, and the job report's fold."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvops.config import Settings
from cvops.errors import Unavailable
from cvops.events.log import EventLog
from cvops.events.schema import BenchmarkMeasured, EngineSelected, JobQueued, JobSubmitted, UploadRejected
from cvops.platform.api_jobs import SUBMIT_LOCKS
from cvops.platform.api_packages import PACKAGES, Packages
from cvops.platform.api_reports import job_events
from cvops.platform.app import make_app
from cvops.platform.keys import SERVICES
from cvops.platform.services import STARTING, BootedStore, Services
from cvops.platform.uploads import UPLOAD_QUOTA, UploadQuota
from cvops.reports import benchmark


def test_every_service_is_503_until_ready() -> None:
    services = Services(store=object(), auth=None)  # type: ignore[arg-type]
    for need, component in (
        (services.need_store, "store"),
        (services.need_registry, "registry"),
        (services.need_scheduler, "scheduler"),
        (services.need_pool, "pool"),
        (services.need_auth, "auth"),
    ):
        with pytest.raises(Unavailable) as err:
            need()
        assert err.value.message == STARTING and err.value.details == {"component": component}
    services.ready = True
    assert services.need_store() is services.store
    with pytest.raises(Unavailable):
        services.need_registry()  # ready, but never set


async def test_booted_store_reaches_the_store_once_boot_is_done(tmp_path: Path) -> None:
    services = Services()
    store = BootedStore(services)
    with pytest.raises(Unavailable):
        await store.wait_for(0, 0)
    async with await EventLog.open(tmp_path / "events.db") as log:
        await log.append("rejections", [UploadRejected(kind="model", reason="r")], user="u")
        services.store, services.ready = log, True
        assert await store.wait_for(0, 0) == 1
        await store.append("job-a", [JobQueued(job_id="a", position=1)], 0, user="u")
        envs = await store.read(after=0, prefix="job-")
        assert [(e.seq, e.stream, e.user) for e in envs] == [(2, "job-a", "u")]
        assert await store.stream_version("job-a") == 1


def test_make_app_holds_the_gateways_own_state_under_typed_keys(tmp_path: Path) -> None:
    app = make_app(Settings(data_dir=str(tmp_path)))
    assert isinstance(app[UPLOAD_QUOTA], UploadQuota) and isinstance(app[PACKAGES], Packages)
    assert app[SUBMIT_LOCKS] == {}
    assert isinstance(app[UPLOAD_QUOTA].store, BootedStore)
    assert app[UPLOAD_QUOTA].store.services is app[SERVICES]
    assert not (tmp_path / "blobs").exists()  # nothing is made on disk before an upload


async def test_report_parts_keep_the_last_measurement_and_selection(tmp_path: Path) -> None:
    def measured(n: int) -> BenchmarkMeasured:
        return BenchmarkMeasured(job_id="a", model_id="m", results=[{"n": n}])

    selected = EngineSelected(
        job_id="a",
        model_id="m",
        selected="ort",
        selected_batch=1,
        eligible=["ort"],
        rejected={},
        objective="p50",
    )
    async with await EventLog.open(tmp_path / "events.db") as log:
        await log.append("job-a", [measured(1), JobQueued(job_id="a", position=1), measured(2), selected])
        await log.append("job-b", [measured(3)])
        await log.append("scheduler", [JobSubmitted(job_id="a", kind="benchmark", spec={"model_id": "m"})])
        evs = await job_events(log, "a")  # job-b's measurement is not among them
        parts = benchmark.from_events("a", evs)
        assert parts.job["spec"] == {"model_id": "m"} and len(evs) == 5
    assert parts.measured is not None and parts.measured["results"] == [{"n": 2}]
    assert parts.selection is not None and parts.selection["selected"] == "ort"
