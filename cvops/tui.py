"""``cvops tui``: a Textual client for the gateway.

Tabs for models, jobs, the GPU scheduler, deployments and a live event log.  The log is fed by the
events websocket (:meth:`cvops.client.AsyncClient.subscribe`) in a background worker; the tables are
refreshed over REST when an event about them arrives (debounced), and on ``r``.  Keys: ``q`` quit,
``r`` refresh, ``c`` cancel the job selected in the Jobs tab, ``1``-``5`` switch tabs.

Every error (refused login, missing role, unreachable gateway) becomes a notification; the app never
prints a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    RichLog,
    Static,
    TabbedContent,
    TabPane,
)
from textual.worker import Worker, WorkerState

from cvops import errors as E
from cvops.client import AsyncClient

log = logging.getLogger(__name__)

# remote errors and transport failures: they become a notification rather than a crash
HANDLED: tuple[type[Exception], ...] = (E.CvopsError, aiohttp.ClientError, OSError, TimeoutError)
# event types whose arrival refreshes the tables
REFRESH_PREFIXES = ("Model", "Job", "Deployment", "GpuToken")
TABS = ("tab-models", "tab-jobs", "tab-scheduler", "tab-deployments", "tab-events")

MODEL_COLUMNS = (("id", "id"), ("name", "name"), ("task", "task"), ("status", "status"), ("parity", "parity"))
JOB_COLUMNS = (("id", "id"), ("kind", "kind"), ("status", "status"), ("progress", "progress"))
DEPLOYMENT_COLUMNS = (
    ("id", "id"),
    ("model", "model_id"),
    ("engine", "engine"),
    ("workers", "workers"),
    ("status", "status"),
)


# ---------------------------------------------------------------------------------- pure formatting


def format_parity(parity: dict[str, Any] | None) -> str:
    if not parity:
        return "-"
    verdict = "ok" if parity.get("passed", True) else "FAIL"
    diff = parity.get("max_abs_diff")
    top1 = parity.get("top1_agreement")
    parts = [verdict]
    if isinstance(diff, int | float):
        parts.append(f"Δ{diff:.1e}")
    if isinstance(top1, int | float):
        parts.append(f"top1 {top1:.0%}")
    return " ".join(parts)


def format_progress(job: dict[str, Any]) -> str:
    p = job.get("progress") or {}
    if not p:
        return "100%" if job.get("status") == "succeeded" else "-"
    if "fraction" in p and isinstance(p["fraction"], int | float):
        return f"{p['fraction']:.0%}"
    if "epoch" in p and "epochs" in p:
        out = f"epoch {p['epoch']}/{p['epochs']}"
        if isinstance(p.get("loss"), int | float):
            out += f" loss {p['loss']:.3f}"
        return out
    phase = p.get("phase")
    rest = ", ".join(f"{k}={v}" for k, v in p.items() if k != "phase" and not isinstance(v, dict | list))
    return " ".join(x for x in (str(phase) if phase else "", rest) if x)[:60] or "-"


def format_scheduler(view: dict[str, Any]) -> str:
    lines = [
        f"GPU tokens: {view.get('in_use', 0)} in use of {view.get('tokens', 0)} "
        f"({view.get('free', 0)} free; most ever in use: {view.get('max_in_use_seen', 0)})",
        "",
        "Holders:",
    ]
    holders = view.get("holders") or []
    lines += [f"  token {h.get('token')} → job {h.get('job_id')}" for h in holders] or ["  (none)"]
    queue = view.get("queue") or []
    lines += ["", f"Queue ({len(queue)}):"]
    lines += [f"  {i + 1}. {job}" for i, job in enumerate(queue)] or ["  (empty)"]
    return "\n".join(lines)


def format_event(event: dict[str, Any], width: int = 120) -> str:
    ts = event.get("ts")
    clock = time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, int | float) else "--:--:--"
    data = json.dumps(event.get("data") or {}, separators=(",", ":"), default=str)
    if len(data) > width:
        data = data[: width - 1] + "…"
    who = f" by {event['user']}" if event.get("user") else ""
    return f"{event.get('seq', '?'):>6} {clock} {event.get('type', '?'):<24} {event.get('stream', '')}{who} {data}"


def is_relevant(event: dict[str, Any]) -> bool:
    return str(event.get("type", "")).startswith(REFRESH_PREFIXES)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, E.CvopsError):
        return exc.message
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}"
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------------- screens


class LoginScreen(Screen[tuple[str, str]]):
    """Username and password; dismisses with ``(username, password)``."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.quit", "Quit")]

    def __init__(self, url: str, username: str = "", error: str = "") -> None:
        super().__init__()
        self.url = url
        self.username = username
        self.error = error

    def compose(self) -> ComposeResult:
        with Vertical(id="login-box"):
            yield Label(f"Log in to {self.url}", id="login-title")
            yield Input(value=self.username, placeholder="username", id="login-username")
            yield Input(placeholder="password", password=True, id="login-password")
            yield Button("Log in", variant="primary", id="login-submit")
            yield Static(self.error, id="login-error", markup=False)

    def on_mount(self) -> None:
        target = "#login-password" if self.username else "#login-username"
        self.query_one(target, Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#login-submit")
    def submit(self) -> None:
        username = self.query_one("#login-username", Input).value.strip()
        password = self.query_one("#login-password", Input).value
        if not username or not password:
            self.query_one("#login-error", Static).update("username and password are required")
            return
        self.dismiss((username, password))


# ---------------------------------------------------------------------------------- the app


class CvopsApp(App[int]):
    """The cvops terminal client."""

    CSS_PATH = "tui.tcss"
    TITLE = "cvops"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("r", "refresh", "Refresh"),
        Binding("c", "cancel_job", "Cancel job"),
        *(
            Binding(str(i + 1), f"show_tab('{tab}')", tab[4:].title(), show=False)
            for i, tab in enumerate(TABS)
        ),
    ]

    def __init__(
        self,
        url: str,
        username: str = "admin",
        password: str | None = None,
        *,
        history: int = 50,
        refresh_delay_s: float = 0.3,
    ) -> None:
        super().__init__()
        self.url = url.rstrip("/")
        self.username = username
        self._password = password
        self.history = history
        self.refresh_delay_s = refresh_delay_s
        self.client = AsyncClient(self.url)
        self.role: str | None = None
        self.logged_in = False
        self.events_seen: deque[dict[str, Any]] = deque(maxlen=5000)
        self.refreshes = 0  # completed refreshes (tests wait on it)
        self.last_error: str | None = None
        self.notices: deque[tuple[str, str, str]] = deque(maxlen=200)  # (severity, title, message)
        self._refresh_pending = False
        self._told: set[tuple[str, str]] = set()  # (section, error code) already notified

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="tabs"):
            with TabPane("Models", id="tab-models"):
                yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
            with TabPane("Jobs", id="tab-jobs"):
                yield DataTable(id="jobs", cursor_type="row", zebra_stripes=True)
            with TabPane("Scheduler", id="tab-scheduler"):
                yield Static("not loaded yet", id="scheduler", markup=False)
            with TabPane("Deployments", id="tab-deployments"):
                yield DataTable(id="deployments", cursor_type="row", zebra_stripes=True)
            with TabPane("Events", id="tab-events"):
                yield RichLog(id="events", max_lines=2000, markup=False, highlight=False)
        yield Footer()

    def on_mount(self) -> None:
        self.models_table = self.query_one("#models", DataTable)
        self.jobs_table = self.query_one("#jobs", DataTable)
        self.deployments_table = self.query_one("#deployments", DataTable)
        self.scheduler_view = self.query_one("#scheduler", Static)
        self.events_log = self.query_one("#events", RichLog)
        self.tabs = self.query_one("#tabs", TabbedContent)
        self._tables: dict[str, tuple[DataTable[str], tuple[tuple[str, str], ...]]] = {
            "models": (self.models_table, MODEL_COLUMNS),
            "jobs": (self.jobs_table, JOB_COLUMNS),
            "deployments": (self.deployments_table, DEPLOYMENT_COLUMNS),
        }
        for table, columns in self._tables.values():
            for label, key in columns:
                table.add_column(label, key=key)
        self.sub_title = self.url
        password = self._password
        if password is None and self.username == "admin":
            password = os.environ.get("CVOPS_ADMIN_PASSWORD") or None
        self._password = None
        if password:
            self.do_login(self.username, password)
        else:
            self.show_login()

    async def on_unmount(self) -> None:
        await self.client.close()

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Textual's toast, also kept in :attr:`notices` (the last 200)."""
        self.notices.append((severity, title, message))
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    # ------------------------------------------------------------------ login

    def show_login(self, error: str = "") -> None:
        self.push_screen(LoginScreen(self.url, self.username, error), callback=self._on_credentials)

    def _on_credentials(self, credentials: tuple[str, str] | None) -> None:
        if credentials is None:
            self.exit(1)
            return
        self.do_login(*credentials)

    @work(exclusive=True, group="login", exit_on_error=False)
    async def do_login(self, username: str, password: str) -> None:
        try:
            answer = await self.client.login(username, password)
        except HANDLED as exc:
            message = describe_error(exc)
            self.last_error = message
            self.notify(message, title="Login failed", severity="error", markup=False)
            self.username = username
            self.show_login(message)
            return
        self.username = username
        self.role = str(answer.get("role") or "")
        self.logged_in = True
        self.sub_title = f"{username} ({self.role}) @ {self.url}"
        self.notify(f"logged in as {username} ({self.role})", markup=False)
        self.refresh_all()
        self.follow_events()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("refresh", "cancel_job") and not self.logged_in:
            return False
        return True

    # ------------------------------------------------------------------ refresh

    def _report(self, section: str, exc: BaseException, once: bool = False) -> None:
        code = exc.code if isinstance(exc, E.CvopsError) else type(exc).__name__
        if once and (section, code) in self._told:
            return
        self._told.add((section, code))
        self.last_error = f"{section}: {describe_error(exc)}"
        self.notify(describe_error(exc), title=f"{section}: {code}", severity="error", markup=False)

    @work(exclusive=True, group="refresh", exit_on_error=False)
    async def refresh_all(self) -> None:
        if not self.logged_in:
            return
        models, jobs, scheduler, deployments = await asyncio.gather(
            self.client.models(),
            self.client.jobs(),
            self.client.scheduler(),
            self.client.deployments(),
            return_exceptions=True,
        )
        for section, result in (("models", models), ("jobs", jobs), ("deployments", deployments)):
            if isinstance(result, BaseException):
                self._failed(section, result)
            else:
                table, columns = self._tables[section]
                self._fill(table, result, columns)
        if isinstance(scheduler, BaseException):
            self._failed("scheduler", scheduler)
        else:
            self.scheduler_view.update(format_scheduler(scheduler))
        self.refreshes += 1

    def _failed(self, section: str, exc: BaseException) -> None:
        if not isinstance(exc, HANDLED):
            raise exc
        # a missing role stays missing: say it once, not on every event
        self._report(section, exc, once=isinstance(exc, E.Forbidden))

    def _cell(self, record: dict[str, Any], key: str) -> str:
        if key == "parity":
            return format_parity(record.get("parity"))
        if key == "progress":
            return format_progress(record)
        value = record.get(key)
        return "-" if value is None else str(value)

    def _fill(
        self, table: DataTable[str], records: list[dict[str, Any]], columns: tuple[tuple[str, str], ...]
    ) -> None:
        selected: str | None = None
        if table.row_count:
            row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
            selected = row_key.value
        table.clear()
        for record in records:
            table.add_row(*(self._cell(record, key) for _, key in columns), key=str(record.get("id")))
        if selected is not None and selected in {str(r.get("id")) for r in records}:
            table.move_cursor(row=table.get_row_index(selected))

    def _schedule_refresh(self) -> None:
        if self._refresh_pending:
            return
        self._refresh_pending = True
        self.set_timer(self.refresh_delay_s, self._fire_refresh)

    def _fire_refresh(self) -> None:
        self._refresh_pending = False
        self.refresh_all()

    # ------------------------------------------------------------------ events

    @work(exclusive=True, group="events", exit_on_error=False)
    async def follow_events(self) -> None:
        try:
            head = await self.client.head()
            self.events_log.write(f"— live events (the last {min(head, self.history)} first) —")
            async for event in self.client.subscribe(after=max(0, head - self.history)):
                self.show_event(event)
        except HANDLED as exc:
            self._report("events", exc)

    def show_event(self, event: dict[str, Any]) -> None:
        self.events_seen.append(event)
        self.events_log.write(format_event(event))
        if is_relevant(event):
            self._schedule_refresh()

    # ------------------------------------------------------------------ actions

    def action_refresh(self) -> None:
        self.refresh_all()

    def action_show_tab(self, tab: str) -> None:
        self.tabs.active = tab

    def action_cancel_job(self) -> None:
        if self.tabs.active != "tab-jobs":
            self.notify("select a job in the Jobs tab (2) first", severity="warning")
            return
        if not self.jobs_table.row_count:
            self.notify("no job to cancel", severity="warning")
            return
        row_key, _ = self.jobs_table.coordinate_to_cell_key(self.jobs_table.cursor_coordinate)
        if row_key.value:
            self.cancel_job(row_key.value)

    @work(group="cancel", exit_on_error=False)
    async def cancel_job(self, job_id: str) -> None:
        try:
            view = await self.client.cancel_job(job_id)
        except HANDLED as exc:
            self._report(f"cancel {job_id}", exc)
            return
        self.notify(f"job {job_id}: {view.get('status')}", title="Cancel requested", markup=False)
        self._schedule_refresh()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Anything a worker did not expect is shown, not printed as a traceback."""
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            err = event.worker.error
            log.warning("worker %s failed: %r", event.worker.name, err, exc_info=err)
            self._report(event.worker.name or "worker", err)


def resolve_password(password_file: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The password for ``cvops tui``, never from argv: the first line of ``password_file``, else
    ``CVOPS_PASSWORD``, else None (the TUI then asks in its masked login prompt)."""
    if password_file:
        try:
            text = Path(password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise E.ValidationFailed(
                f"cannot read the password file {password_file}: {reason}", {"field": "password_file"}
            ) from exc
        password = text.split("\n", 1)[0].rstrip("\r")
        if not password:
            raise E.ValidationFailed(
                f"the password file {password_file} is empty", {"field": "password_file"}
            )
        return password
    env = os.environ if env is None else env
    return env.get("CVOPS_PASSWORD") or None


def run_tui(url: str, username: str = "admin", password: str | None = None) -> int:
    """Run the TUI until the user quits; returns the process exit code."""
    root = logging.getLogger()
    if not root.handlers:  # stderr output would tear the screen: route logging through Textual
        from textual.logging import TextualHandler

        root.addHandler(TextualHandler(stderr=False))
    app = CvopsApp(url, username, password)
    app.run()
    return int(app.return_code or 0)
