"""cvops.client and `cvops tui` against a real `cvops serve` (the session's `live` server).

Client: login, error mapping (401 bad token, 403 as viewer, 404), presets with ?wait=true, and a
websocket subscription that sees an event appended after it started.  TUI (Textual `run_test`): logs
in (from the argument and through the login screen), shows the models table, receives live events,
refreshes on them, cancels a job with `c`, reports errors as notifications, and quits on `q`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, RichLog

from cvops import errors as E
from cvops.client import AsyncClient, Client
from cvops.tui import CvopsApp, LoginScreen, format_event, format_parity, format_progress, format_scheduler
from tests.e2e.conftest import Live
from tests.e2e.server import ADMIN_PASSWORD

SIZE = (140, 40)


@pytest.fixture(scope="module")
async def tiny_model(live: Live) -> dict[str, Any]:
    async with AsyncClient(live.url, live.admin) as api:
        return await api.create_preset("tiny_cnn", wait=True, name="tui-tiny")


async def _until(pilot: Pilot[Any], cond: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await pilot.pause(0.05)


async def _logged_in(pilot: Pilot[Any], app: CvopsApp, timeout: float = 120.0) -> None:
    """Wait for the outcome of the app's first login, not for a time: logged in, or refused (then fail
    at once with the server's reason instead of timing out)."""
    await _until(pilot, lambda: app.logged_in or app.last_error is not None, timeout, "the login's outcome")
    assert app.logged_in, f"login refused: {app.last_error}"


def _column(table: DataTable[Any], key: str) -> list[str]:
    return [str(table.get_cell(row, key)) for row in table.rows]


# ---------------------------------------------------------------------------------- the client


async def test_client_errors_map_to_cvops_errors(live: Live, tiny_model: dict[str, Any]) -> None:
    async with AsyncClient(live.url) as api:
        with pytest.raises(E.Unauthorized):
            await api.login("admin", "not-the-password")
        answer = await api.login("admin", ADMIN_PASSWORD)
        assert answer["role"] == "admin" and api.token
        assert (await api.me())["username"] == "admin"
        assert tiny_model["status"] == "ready" and tiny_model["parity"]["passed"] is True
        assert tiny_model["id"] in {m["id"] for m in await api.models()}
        with pytest.raises(E.NotFound):
            await api.model("no-such-model")
        with pytest.raises(E.NotFound):
            await api.job("no-such-job")
        with pytest.raises(E.ValidationFailed) as bad:
            await api.create_preset("not-a-preset")
        assert bad.value.details.get("field") == "preset"
        assert isinstance(await api.scheduler(), dict) and isinstance(await api.jobs(), list)
        assert isinstance(await api.deployments(), list)
    async with AsyncClient(live.url, live.viewer) as viewer:
        with pytest.raises(E.Forbidden):
            await viewer.models()
        with pytest.raises(E.Forbidden):
            await viewer.events()
        with pytest.raises(E.Forbidden):
            async for _ in viewer.subscribe():
                break
    async with AsyncClient(live.url, "garbage-token") as bad_token:
        with pytest.raises(E.Unauthorized):
            await bad_token.me()
        with pytest.raises(E.Unauthorized):
            async for _ in bad_token.subscribe():
                break


async def test_subscribe_sees_an_event_appended_after_it_started(live: Live) -> None:
    name = f"sub{uuid.uuid4().hex[:8]}"
    async with AsyncClient(live.url, live.admin) as api:
        head = await api.head()
        page = await api.events(after=max(0, head - 1), limit=5)
        assert page["last_seq"] >= head >= 1 and page["events"][0]["seq"] == head
        seen: list[dict[str, Any]] = []
        started = asyncio.Event()

        async def reader() -> None:
            async for event in api.subscribe(after=head):
                seen.append(event)
                started.set()
                if event["type"] == "UserCreated" and event["data"].get("username") == name:
                    return

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.5)  # the websocket is up and live before the append
        await api.create_user(name, "password-123", "viewer")
        await asyncio.wait_for(task, 30)
    created = seen[-1]
    assert created["data"]["password_hash"] == "***" and created["stream"] == f"user-{name}"
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(head + 1, head + 1 + len(seqs))), "gap or duplicate"
    assert all(e.get("type") != "heartbeat" for e in seen)


def test_sync_client(live: Live, tiny_model: dict[str, Any]) -> None:
    with Client(live.url) as api:
        api.login("eve", "eve-password")
        assert api.me()["role"] == "engineer"
        assert api.model(tiny_model["id"])["status"] == "ready"
        with pytest.raises(E.Forbidden):
            api.create_user("nobody", "password-123")
        first = next(iter(api.subscribe(after=0)))
        assert first["seq"] >= 1 and not first["stream"].startswith("user-")  # user events: admins only


# ---------------------------------------------------------------------------------- the TUI


@pytest.fixture
async def admin_api(live: Live) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(live.url, live.admin) as api:
        yield api


async def test_tui_models_live_events_refresh_and_quit(
    live: Live, tiny_model: dict[str, Any], admin_api: AsyncClient
) -> None:
    app = CvopsApp(live.url, "admin", ADMIN_PASSWORD, refresh_delay_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await _logged_in(pilot, app)
        assert app.role == "admin" and "admin (admin)" in app.sub_title
        models = app.query_one("#models", DataTable)
        await _until(pilot, lambda: tiny_model["id"] in _column(models, "id"), what="models table")
        row = models.get_row(tiny_model["id"])
        assert row[1:4] == ["tui-tiny", "classification", "ready"] and row[4].startswith("ok")
        assert [str(c.label) for c in models.columns.values()] == ["id", "name", "task", "status", "parity"]
        await _until(pilot, lambda: "GPU tokens:" in str(app.scheduler_view.content), what="scheduler tab")

        # a live event reaches the log
        name = f"tui{uuid.uuid4().hex[:8]}"
        await admin_api.create_user(name, "password-123", "viewer")

        def created() -> bool:
            return any(
                e["type"] == "UserCreated" and e["data"].get("username") == name for e in app.events_seen
            )

        await _until(pilot, created, what="UserCreated in the events log")
        await pilot.press("5")
        assert app.tabs.active == "tab-events"
        log = app.query_one("#events", RichLog)
        await _until(pilot, lambda: any(name in line.text for line in log.lines), what="rendered event line")

        # a model event refreshes the models table without pressing r
        second = await admin_api.create_preset("tiny_cnn", name="tui-second")
        await _until(pilot, lambda: second["id"] in _column(models, "id"), what="refresh on a Model event")

        await pilot.press("q")
        await pilot.pause()
        assert app.return_code == 0 and not app.is_running
    assert not any(sev == "error" for sev, _, _ in app.notices), app.notices


async def test_tui_login_screen_rejects_then_accepts(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CVOPS_ADMIN_PASSWORD", raising=False)
    app = CvopsApp(live.url, "admin", None)
    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: isinstance(app.screen, LoginScreen), what="login screen")
        # q, r and c typed into the password box are text, not key bindings
        await pilot.press(*"quick-wrong-rc", "enter")
        await _until(pilot, lambda: app.last_error is not None, what="the refusal")
        assert app.is_running and not app.logged_in
        assert any(sev == "error" and title == "Login failed" for sev, title, _ in app.notices)
        await _until(pilot, lambda: isinstance(app.screen, LoginScreen), what="login screen again")
        assert "password" in str(app.screen.query_one("#login-error").render()).lower()
        await pilot.press(*ADMIN_PASSWORD, "enter")
        await _until(pilot, lambda: app.logged_in, what="login")
        assert not isinstance(app.screen, LoginScreen)
        await _until(pilot, lambda: app.refreshes > 0, what="first refresh")
        before = app.refreshes  # read before the key: a quick refresh must not be counted in `before`
        await pilot.press("r")
        await _until(pilot, lambda: app.refreshes > before, what="refresh on r")


async def test_tui_viewer_sees_errors_as_notifications(live: Live, admin_api: AsyncClient) -> None:
    # a viewer of its own: test_rbac's throttle test locks "vic" out of the shared server for a minute
    viewer = f"tv{uuid.uuid4().hex[:8]}"
    await admin_api.create_user(viewer, "viewer-password-1", "viewer")
    app = CvopsApp(live.url, viewer, "viewer-password-1")
    async with app.run_test(size=SIZE) as pilot:
        await _logged_in(pilot, app)
        await _until(
            pilot,
            lambda: {"models", "events"} <= {t.split(":")[0] for _, t, _ in app.notices},
            what="forbidden notifications",
        )
        assert all(sev == "error" for sev, t, _ in app.notices if t.startswith(("models", "events")))
        assert app.is_running and app.query_one("#models", DataTable).row_count == 0
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


async def test_tui_cancels_the_selected_job(
    live: Live, tiny_model: dict[str, Any], admin_api: AsyncClient
) -> None:
    job = await admin_api.submit_job(
        {
            "kind": "benchmark",
            "model_id": tiny_model["id"],
            "engines": ["onnxruntime-cpu"],
            "batch_sizes": [1],
            "warmup": 1,
            "iterations": 10000,
        }
    )
    app = CvopsApp(live.url, "admin", ADMIN_PASSWORD, refresh_delay_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await _logged_in(pilot, app)
        jobs = app.query_one("#jobs", DataTable)
        await _until(pilot, lambda: job["id"] in _column(jobs, "id"), what="jobs table")
        await pilot.press("c")  # not on the Jobs tab: a warning, nothing cancelled
        assert app.notices and app.notices[-1][0] == "warning"
        await pilot.press("2")
        jobs.move_cursor(row=jobs.get_row_index(job["id"]))
        await pilot.press("c")
        await _until(
            pilot,
            lambda: jobs.get_row(job["id"])[2] == "cancelled",
            timeout=60,
            what="cancelled in the table",
        )
    assert (await admin_api.job(job["id"]))["status"] == "cancelled"


def test_formatters_tolerate_partial_records() -> None:
    assert format_parity(None) == "-"
    assert format_parity({"passed": False, "max_abs_diff": 0.5}) == "FAIL Δ5.0e-01"
    assert (
        format_parity({"passed": True, "max_abs_diff": 1e-6, "top1_agreement": 1.0})
        == "ok Δ1.0e-06 top1 100%"
    )
    assert format_progress({"status": "queued"}) == "-"
    assert format_progress({"status": "succeeded"}) == "100%"
    assert format_progress({"progress": {"phase": "epoch", "epoch": 2, "epochs": 5, "loss": 0.25}}) == (
        "epoch 2/5 loss 0.250"
    )
    assert format_progress({"progress": {"phase": "measure", "engine": "onnxruntime-cpu"}}) == (
        "measure engine=onnxruntime-cpu"
    )
    text = format_scheduler(
        {"tokens": 2, "in_use": 1, "free": 1, "holders": [{"token": 0, "job_id": "j1"}], "queue": ["j2"]}
    )
    assert "1 in use of 2" in text and "token 0 → job j1" in text and "1. j2" in text
    assert "(none)" in format_scheduler({}) and "(empty)" in format_scheduler({})
    line = format_event(
        {"seq": 7, "type": "JobStarted", "stream": "job-1", "data": {"x": "y" * 500}}, width=40
    )
    assert line.split()[0] == "7" and "JobStarted" in line and line.endswith("…") and len(line) < 120
    assert "?" in format_event({})
