"""Settings from ``CVOPS_*`` environment variables: one msgspec Struct, every limit lives here."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import msgspec

from cvops.errors import ValidationFailed

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "KI": 1024,
    "KIB": 1024,
    "M": 1000**2,
    "MB": 1000**2,
    "MI": 1024**2,
    "MIB": 1024**2,
    "G": 1000**3,
    "GB": 1000**3,
    "GI": 1024**3,
    "GIB": 1024**3,
    "T": 1000**4,
    "TB": 1000**4,
    "TI": 1024**4,
    "TIB": 1024**4,
}

GIB = 1024**3


def parse_size(text: str) -> int:
    """``"1GiB"`` → 1073741824; plain integers are bytes."""
    m = _SIZE.match(text)
    if not m:
        raise ValidationFailed(f"not a size: {text!r}", {"value": text})
    unit = (m.group(2) or "").upper()
    return int(float(m.group(1)) * _UNITS[unit])


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    data_dir: str = "./.cvops"
    host: str = "127.0.0.1"
    port: int = 8080
    admin_password: str | None = None
    jwt_secret: str | None = None
    jwt_ttl_s: int = 3600
    gpu_tokens: int = 2
    inference_workers: int = 10
    queue_limit: int = 1000
    inference_timeout_s: float = 30.0
    video_timeout_s: float | None = None  # one video's decode; see video_deadline_s
    max_model_bytes: int = GIB
    max_dataset_bytes: int = 10 * GIB
    gpu_memory_mb: int = 16384
    job_queue_limit: int = 1000
    max_json_bytes: int = 1024 * 1024
    max_predict_bytes: int = 64 * 1024 * 1024
    # admission (DESIGN.md §5): bodies held per deployment, unfinished jobs and stored upload bytes per user
    max_predict_inflight_bytes: int = 256 * 1024 * 1024
    max_queued_jobs_per_user: int = 20
    max_stored_bytes_per_user: int = 50 * GIB
    login_max_failures: int = 5
    login_window_s: float = 60.0
    login_max_failures_per_client: int = 30  # failed logins per remote address per window
    max_websockets_per_user: int = 8  # open /events/ws sockets per user
    ray_address: str | None = None
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265
    ray_num_cpus: int | None = None
    conversion_timeout_s: float = 300.0
    max_conversions: int = 2  # at once; each gets the machine's RAM / max_conversions
    weights_cache: str | None = None  # pretrained weights (default: <data_dir>/weights)
    # checkpoints kept per training run: "last,best" (default), "last", "all", or N (the newest N + the best)
    keep_checkpoints: str = "last,best"
    # how the gateway reads the event log: "sqlite" (the file itself, read-only) or "actor" (through it)
    event_reads: str = "sqlite"
    # CUDA deployments decode JPEGs on the GPU (nvjpeg); False keeps decoding on the CPU
    gpu_decode: bool = True
    evolve_prune: bool = True  # evolutions stop trials by the median rule (a request may still say no)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def db_path(self) -> Path:
        return self.data_path / "events.db"

    @property
    def weights_path(self) -> Path:
        """Where published pre-trained weights are cached (CVOPS_WEIGHTS_CACHE)."""
        return Path(self.weights_cache) if self.weights_cache else self.data_path / "weights"

    @property
    def blob_root(self) -> Path:
        return self.data_path / "blobs"

    @property
    def video_deadline_s(self) -> float:
        """Seconds a worker spends on the videos of one batch before answering 504: CVOPS_VIDEO_TIMEOUT_S,
        never more than the request's CVOPS_INFERENCE_TIMEOUT_S; unset (or <= 0) 0.9 of that, so the
        worker stops, and says why, before the gateway gives up on the request."""
        if self.video_timeout_s is None or self.video_timeout_s <= 0:
            return 0.9 * self.inference_timeout_s
        return min(self.video_timeout_s, self.inference_timeout_s)

    def masked(self) -> dict[str, object]:
        out = msgspec.to_builtins(self)
        for key in ("admin_password", "jwt_secret"):
            if out.get(key):
                out[key] = "***"
        return out  # type: ignore[no-any-return]


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("use 1/true/yes/on or 0/false/no/off")


_ENV: dict[str, tuple[str, Callable[[str], object]]] = {
    "CVOPS_DATA_DIR": ("data_dir", str),
    "CVOPS_HOST": ("host", str),
    "CVOPS_PORT": ("port", int),
    "CVOPS_ADMIN_PASSWORD": ("admin_password", str),
    "CVOPS_JWT_SECRET": ("jwt_secret", str),
    "CVOPS_JWT_TTL_S": ("jwt_ttl_s", int),
    "CVOPS_GPU_TOKENS": ("gpu_tokens", int),
    "CVOPS_INFERENCE_WORKERS": ("inference_workers", int),
    "CVOPS_QUEUE_LIMIT": ("queue_limit", int),
    "CVOPS_INFERENCE_TIMEOUT_S": ("inference_timeout_s", float),
    "CVOPS_VIDEO_TIMEOUT_S": ("video_timeout_s", float),
    "CVOPS_MAX_MODEL_BYTES": ("max_model_bytes", parse_size),  # type: ignore[dict-item]
    "CVOPS_MAX_DATASET_BYTES": ("max_dataset_bytes", parse_size),  # type: ignore[dict-item]
    "CVOPS_GPU_MEMORY_MB": ("gpu_memory_mb", int),
    "CVOPS_JOB_QUEUE_LIMIT": ("job_queue_limit", int),
    "CVOPS_MAX_PREDICT_BYTES": ("max_predict_bytes", parse_size),  # type: ignore[dict-item]
    "CVOPS_MAX_PREDICT_INFLIGHT_BYTES": ("max_predict_inflight_bytes", parse_size),  # type: ignore[dict-item]
    "CVOPS_MAX_QUEUED_JOBS_PER_USER": ("max_queued_jobs_per_user", int),
    "CVOPS_MAX_STORED_BYTES_PER_USER": ("max_stored_bytes_per_user", parse_size),  # type: ignore[dict-item]
    "CVOPS_LOGIN_MAX_FAILURES": ("login_max_failures", int),
    "CVOPS_LOGIN_WINDOW_S": ("login_window_s", float),
    "CVOPS_LOGIN_MAX_FAILURES_PER_CLIENT": ("login_max_failures_per_client", int),
    "CVOPS_MAX_WEBSOCKETS_PER_USER": ("max_websockets_per_user", int),
    "RAY_ADDRESS": ("ray_address", str),
    "CVOPS_DASHBOARD_HOST": ("dashboard_host", str),
    "CVOPS_DASHBOARD_PORT": ("dashboard_port", int),
    "CVOPS_RAY_NUM_CPUS": ("ray_num_cpus", int),
    "CVOPS_CONVERSION_TIMEOUT_S": ("conversion_timeout_s", float),
    "CVOPS_MAX_CONVERSIONS": ("max_conversions", int),
    "CVOPS_WEIGHTS_CACHE": ("weights_cache", str),
    "CVOPS_KEEP_CHECKPOINTS": ("keep_checkpoints", str),
    "CVOPS_EVENT_READS": ("event_reads", str),
    "CVOPS_GPU_DECODE": ("gpu_decode", _flag),
    "CVOPS_EVOLVE_PRUNE": ("evolve_prune", _flag),
}


ENV_NAMES = tuple(_ENV)


def load_settings(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read settings from ``env`` (default: ``os.environ``); bad values raise ValidationFailed."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for name, (field, conv) in _ENV.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        try:
            values[field] = conv(raw)
        except ValueError as exc:
            raise ValidationFailed(f"{name}={raw!r} is not valid: {exc}", {"env": name}) from exc
    values.update(overrides)
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.gpu_tokens < 1 or settings.inference_workers < 1 or settings.queue_limit < 1:
        raise ValidationFailed("CVOPS_GPU_TOKENS, CVOPS_INFERENCE_WORKERS and CVOPS_QUEUE_LIMIT must be >= 1")
    parse_keep(settings.keep_checkpoints)  # a bad CVOPS_KEEP_CHECKPOINTS fails at start-up
    if settings.event_reads not in ("sqlite", "actor"):
        raise ValidationFailed(
            f"CVOPS_EVENT_READS={settings.event_reads!r} is not valid: use sqlite or actor",
            {"env": "CVOPS_EVENT_READS"},
        )
    return settings


# ----------------------------------------------------------------------- checkpoint keep policy


class KeepPolicy(msgspec.Struct, frozen=True, kw_only=True):
    last: int | None  # the newest N kept; None: every checkpoint is kept
    best: bool  # also the one of the best epoch


def parse_keep(text: str) -> KeepPolicy:
    """``"last,best"`` (default), ``"last"``, ``"all"`` or ``N`` ≥ 1 (the newest N and the best)."""
    t = text.strip().lower().replace(" ", "")
    if t == "all":
        return KeepPolicy(last=None, best=True)
    if t == "last":
        return KeepPolicy(last=1, best=False)
    if set(t.split(",")) == {"last", "best"}:
        return KeepPolicy(last=1, best=True)
    if t.isdigit() and int(t) >= 1:
        return KeepPolicy(last=int(t), best=True)
    raise ValidationFailed(
        f"CVOPS_KEEP_CHECKPOINTS={text!r}: use last,best | last | all | a count >= 1",
        {"env": "CVOPS_KEEP_CHECKPOINTS"},
    )
