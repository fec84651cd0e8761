"""The CLI as a client (issue 11): the README's quick tour, run command by command against a real server.

The commands are read from the README's "Quick tour" code block, so the README and this test cannot
drift: ``VAR=$(cvops ...)`` lines keep their output (an id) for the ``"$VAR"`` of later lines, and
every line runs as ``python -m cvops ...`` with ``CVOPS_CONFIG_DIR`` in a temporary folder.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.conftest import Live
from tests.e2e.helpers import get_bytes, preset, wait_job
from tests.e2e.server import ADMIN_PASSWORD

README = Path(__file__).resolve().parents[2] / "README.md"
# what the test changes in the tour's lines: the server's URL, and a smaller benchmark
SUBSTITUTIONS = {"http://127.0.0.1:8080": None, "--batch-sizes 1,8": "--batch-sizes 1"}
ASSIGN = re.compile(r"^([A-Z][A-Z0-9_]*)=\$\((cvops .*)\)$")


def tour_lines() -> list[str]:
    """The command lines of the README's quick-tour block (comments and blank lines dropped)."""
    text = README.read_text()
    section = text[text.index("## Quick tour") :]
    block = section[section.index("```sh\n") + len("```sh\n") :]
    block = block[: block.index("```")]
    out: list[str] = []
    for raw in block.splitlines():
        line = raw.split("   #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line:
            out.append(line)
    return out


def subcommand(argv: list[str]) -> str:
    """``cvops models preset tiny_cnn`` -> ``models preset``; ``cvops report J`` -> ``report``."""
    groups = {"models", "datasets", "jobs", "deployments", "users"}
    head = argv[1]
    if head in groups or (head == "package" and argv[2:3] == ["verify"]):
        return f"{head} {argv[2]}"
    return head


@dataclass
class Cli:
    url: str
    config_dir: Path
    cwd: Path
    env_extra: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CVOPS_")}
        env.update(
            CVOPS_CONFIG_DIR=str(self.config_dir),
            PYTHONUNBUFFERED="1",
            COLUMNS="200",
            **self.env_extra,
            **extra,
        )
        return env

    def run(self, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cvops", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.cwd,
            env=self.env(**env),
            check=False,
        )


def make_jpeg(path: Path) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (20, 20, 20))
    ImageDraw.Draw(img).ellipse((12, 12, 52, 52), fill=(230, 200, 40))
    img.save(path, format="JPEG")


def make_shapes_zip(path: Path, n_per_class: int = 24) -> None:
    """A small ImageFolder zip of drawn shapes: train/<shape>/*.png and val/<shape>/*.png."""
    from PIL import Image, ImageDraw

    with zipfile.ZipFile(path, "w") as zf:
        for split, n in (("train", n_per_class), ("val", 6)):
            for k, shape in enumerate(("circle", "square", "triangle")):
                for i in range(n):
                    img = Image.new("RGB", (32, 32), (0, 0, 0))
                    draw = ImageDraw.Draw(img)
                    o = 4 + (i % 5)
                    color = (255, 80 + 7 * i % 170, 60 * k)
                    if shape == "circle":
                        draw.ellipse((o, o, 32 - o, 32 - o), fill=color)
                    elif shape == "square":
                        draw.rectangle((o, o, 32 - o, 32 - o), fill=color)
                    else:
                        draw.polygon([(16, o), (o, 32 - o), (32 - o, 32 - o)], fill=color)
                    buf = io.BytesIO()
                    img.save(buf, format="PNG")
                    zf.writestr(f"{split}/{shape}/{i:03d}.png", buf.getvalue())


def test_readme_tour(live: Live, tmp_path: Path) -> None:
    cli = Cli(live.url, tmp_path / "config", tmp_path, {"CVOPS_PASSWORD": ADMIN_PASSWORD})
    make_jpeg(tmp_path / "cat.jpg")
    make_shapes_zip(tmp_path / "shapes.zip")
    lines = tour_lines()
    assert lines and lines[0].startswith("cvops login"), lines
    values: dict[str, str] = {}
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    used: set[str] = set()
    for line in lines:
        for old, new in SUBSTITUTIONS.items():
            line = line.replace(old, live.url if new is None else new)
        m = ASSIGN.match(line)
        var, command = (m.group(1), m.group(2)) if m else (None, line)
        for name, value in values.items():
            command = command.replace(f'"${name}"', shlex.quote(value))
        argv = shlex.split(command)
        assert argv[0] == "cvops", line
        assert not any("$" in a for a in argv), f"unresolved variable in {line!r}"
        proc = cli.run(*argv[1:])
        cmd = subcommand(argv)
        print(f"$ {line}\n[exit {proc.returncode}]\n{proc.stdout}{proc.stderr}")  # shown with -rA
        used.add(cmd)
        assert proc.returncode == 0, f"{line}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        if var:
            value = proc.stdout.strip()
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]*", value), f"{line}: not an id: {proc.stdout!r}"
            values[var] = value
            results[var] = proc
        results[cmd] = proc

    # every client command of the README ran here (a command added to the tour is tested by adding it)
    assert {
        "login",
        "models preset",
        "models ls",
        "models show",
        "benchmark",
        "report",
        "jobs ls",
        "deploy",
        "predict",
        "datasets upload",
        "datasets ls",
        "train",
        "jobs show",
        "evolve",
        "jobs cancel",
        "package",
        "package verify",
        "deployments rm",
    } <= used, used

    # login cached the token, private to the user
    cred = cli.config_dir / "credentials.json"
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    cached = json.loads(cred.read_text())
    assert cached["url"] == live.url and cached["token"] and cached["username"] == "admin"
    assert ADMIN_PASSWORD not in cred.read_text()

    model_id, job_id, dep_id = values["M"], values["J"], values["D"]
    assert model_id in results["models ls"].stdout and "tiny_cnn" in results["models ls"].stdout
    assert "ready" in results["models show"].stdout
    # benchmark --watch: the id on stdout, the live progress and the summary on stderr
    bench = results["J"]
    assert "succeeded" in bench.stderr and "selected" in bench.stderr, bench.stderr
    assert "onnxruntime-cpu" in bench.stderr
    assert results["report"].stdout.lstrip().startswith("#"), results["report"].stdout[:200]
    assert job_id in results["jobs ls"].stdout
    predict = results["predict"].stdout
    assert "cat.jpg" in predict and re.search(r"\b(cat|dog|bird)\b", predict), predict
    assert values["DS"] in results["datasets ls"].stdout and "shapes" in results["datasets ls"].stdout
    train = results["T"]
    assert "succeeded" in train.stderr and "epoch" in train.stderr, train.stderr
    shown = results["jobs show"].stdout
    assert "succeeded" in shown and "model_id" in shown, shown
    assert "cancel" in results["jobs cancel"].stdout
    assert (tmp_path / "model.tar.gz").is_file() and "model.tar.gz" in results["package"].stdout
    assert results["package verify"].stdout.startswith("ok: model.tar.gz verifies"), results["package verify"]
    assert "Ed25519 signature" in results["package verify"].stdout
    assert dep_id in results["deployments rm"].stdout

    # machine-readable reads
    proc = cli.run("jobs", "show", values["T"], "--json")
    assert proc.returncode == 0, proc.stderr
    trained = json.loads(proc.stdout)
    assert trained["status"] == "succeeded" and trained["result"]["model_id"]
    proc = cli.run("models", "show", model_id, "--json")
    assert json.loads(proc.stdout)["id"] == model_id
    proc = cli.run("report", job_id, "--format", "json", "--view", "technical")
    assert proc.returncode == 0 and isinstance(json.loads(proc.stdout), dict), proc.stderr
    proc = cli.run("report", job_id, "--format", "html", "--output", "report.html")
    assert proc.returncode == 0 and (tmp_path / "report.html").read_text().lstrip().lower().startswith("<")
    # an upload streamed from a file: the ONNX form of the tour's model
    status, onnx, _ = get_bytes(live.url, f"/api/v1/models/{model_id}/onnx", live.admin)
    assert status == 200
    (tmp_path / "mine.onnx").write_bytes(onnx)
    proc = cli.run(
        "models", "upload", "mine.onnx", "--task", "classification", "--name", "mine", "--labels", "a,b,c"
    )
    assert proc.returncode == 0 and "ready" in proc.stderr, proc.stderr
    uploaded = proc.stdout.strip()
    proc = cli.run("models", "show", uploaded, "--json")
    assert json.loads(proc.stdout)["source_format"] == "onnx"
    # an ONNX upload cannot be trained: exit 1 and one line saying why, never a traceback
    proc = cli.run("train", uploaded, values["DS"], "--epochs", "1", "--watch")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    print(f"$ cvops train {uploaded} ... (onnx)\n{proc.stdout}{proc.stderr}")
    proc = cli.run("models", "upload", "missing.onnx", "--task", "classification")
    assert proc.returncode == 2, proc.stderr
    proc = cli.run("datasets", "show", values["DS"], "--json")
    assert json.loads(proc.stdout)["status"] == "ready"
    proc = cli.run("deployments", "ls", "--json")
    assert proc.returncode == 0 and dep_id not in {d["id"] for d in json.loads(proc.stdout)}
    proc = cli.run("users", "ls")
    assert proc.returncode == 0 and "admin" in proc.stdout and "eve" in proc.stdout, proc.stderr
    # watching an ended job answers at once: 0 for succeeded, 1 for cancelled
    proc = cli.run("jobs", "watch", job_id)
    assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stdout + proc.stderr
    proc = cli.run("jobs", "watch", values["E"], timeout=300)
    assert proc.returncode == 1 and "cancelled" in proc.stdout, proc.stdout + proc.stderr


def test_exit_codes(live: Live, tmp_path: Path) -> None:
    cli = Cli(live.url, tmp_path / "config", tmp_path)
    # not logged in yet: 3, saying what to do
    proc = cli.run("models", "ls")
    assert proc.returncode == 3 and "cvops login" in proc.stderr, proc.stderr
    # an unreachable server: 3, one line
    dead = f"http://127.0.0.1:{free_port()}"
    proc = cli.run("models", "ls", CVOPS_URL=dead, CVOPS_TOKEN="x")
    assert proc.returncode == 3 and dead in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = cli.run("login", "--url", dead, "--username", "admin", CVOPS_PASSWORD="whatever-pass")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    # a bad token: 3, pointing at cvops login
    proc = cli.run("jobs", "ls", CVOPS_URL=live.url, CVOPS_TOKEN="not-a-token")
    assert proc.returncode == 3 and "cvops login" in proc.stderr, proc.stderr
    # a wrong password: 3, nothing cached
    proc = cli.run("login", "--url", live.url, "--username", "admin", CVOPS_PASSWORD="wrong-password")
    assert proc.returncode == 3 and not (cli.config_dir / "credentials.json").exists(), proc.stderr
    # usage errors: 2
    assert cli.run("train").returncode == 2
    assert cli.run("benchmark", "m", "--batch-sizes", "one").returncode == 2
    proc = cli.run("login", "--password", "secret")
    assert proc.returncode == 2 and "secret" not in proc.stdout
    # a password file works; an engineer (a staff role) can read, the viewer is refused with 3
    pw = tmp_path / "pw"
    pw.write_text("eve-password\n")
    proc = cli.run("login", "--url", live.url, "--username", "eve", "--password-file", str(pw))
    assert proc.returncode == 0, proc.stderr
    assert cli.run("models", "ls", "--json").returncode == 0
    pw.write_text("vic-password\n")
    assert (
        cli.run("login", "--url", live.url, "--username", "vic", "--password-file", str(pw)).returncode == 0
    )
    proc = cli.run("jobs", "ls")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr


def test_watch_falls_back_to_polling(live: Live, tmp_path: Path) -> None:
    """With the engineer's websockets all taken (429 at the handshake), `jobs watch` still follows the
    job to its end by polling GET /jobs/{id}."""
    import asyncio

    import aiohttp

    cli = Cli(live.url, tmp_path / "config", tmp_path, {"CVOPS_URL": live.url, "CVOPS_TOKEN": live.engineer})
    status, model = preset(live.url, live.admin, "tiny_cnn", name="watch-poll", num_classes=2)
    assert status == 200, model
    spec = {
        "kind": "benchmark",
        "model_id": model["id"],
        "batch_sizes": [1],
        "engines": ["onnxruntime-cpu"],
        "iterations": 200,
    }

    async def scenario() -> subprocess.CompletedProcess[str]:
        url = live.url.replace("http", "ws") + f"/api/v1/events/ws?after=0&token={live.engineer}"
        async with aiohttp.ClientSession() as session:
            sockets = []
            while True:
                try:
                    sockets.append(await session.ws_connect(url))
                except aiohttp.WSServerHandshakeError as exc:
                    assert exc.status == 429, exc
                    break
                assert len(sockets) <= 64
            async with session.post(
                live.url + "/api/v1/jobs", json=spec, headers={"Authorization": f"Bearer {live.admin}"}
            ) as resp:
                job = await resp.json()
                assert resp.status == 202, job
            proc = await asyncio.to_thread(cli.run, "jobs", "watch", job["id"], timeout=300)
            for ws in sockets:
                await ws.close()
            return proc

    proc = asyncio.run(scenario())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "succeeded" in proc.stdout and "onnxruntime-cpu" in proc.stdout, proc.stdout
    job_id = proc.stdout.split()[1]
    assert wait_job(live.url, live.admin, job_id, timeout=5)["status"] == "succeeded"


@pytest.mark.parametrize("args", [["package"], ["package", "verify"], ["jobs"]])
def test_usage_without_a_server(tmp_path: Path, args: list[str]) -> None:
    cli = Cli("http://127.0.0.1:1", tmp_path / "config", tmp_path)
    assert cli.run(*args).returncode == 2
