"""Prometheus metrics of the gateway (one registry per app, so tests can build many apps)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

DEPLOYMENT = "deployment"  # the label that names a deployment: only authenticated scrapes see it
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cvops_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "cvops_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ready = Gauge("cvops_ready", "1 when every actor is up", registry=self.registry)
        self.websockets = Gauge("cvops_websockets", "open event websockets", registry=self.registry)
        self.inference_requests = Counter(
            "cvops_inference_requests", "predict requests", ["deployment", "status"], registry=self.registry
        )
        self.inference_latency = Histogram(
            "cvops_inference_seconds",
            "predict latency",
            ["deployment"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_queue = Gauge(
            "cvops_inference_queue_depth",
            "queued + in-flight predictions",
            ["deployment"],
            registry=self.registry,
        )
        self.router = Gauge(
            "cvops_inference_router",
            "router totals per deployment (requests, completed, rejected, timed_out, errors, retries, queued, inflight)",
            ["deployment", "stat"],
            registry=self.registry,
        )
        self.batches = Gauge(
            "cvops_inference_batches",
            "batches sent to workers, by batch size",
            ["deployment", "size"],
            registry=self.registry,
        )

    def observe_router(self, deployment: str, stats: object) -> None:
        """Copy a router's stats (cvops.serving.RouterStats) into the gauges at scrape time."""
        for name in (
            "requests",
            "completed",
            "rejected",
            "timed_out",
            "errors",
            "retries",
            "queued",
            "inflight",
        ):
            self.router.labels(deployment, name).set(float(getattr(stats, name, 0)))
        for size, count in (getattr(stats, "batch_sizes", None) or {}).items():
            self.batches.labels(deployment, str(size)).set(float(count))

    def render(self, with_deployments: bool = True) -> bytes:
        """The Prometheus text; without deployments, series are summed over the deployment label."""
        if with_deployments:
            return generate_latest(self.registry)
        return generate_latest(_WithoutLabel(self.registry, DEPLOYMENT))  # type: ignore[arg-type]


class _WithoutLabel:
    """A view of a registry with one label summed away (``_created`` stamps of such series dropped)."""

    def __init__(self, registry: CollectorRegistry, label: str) -> None:
        self.registry = registry
        self.label = label

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if not any(self.label in s.labels for s in family.samples):
                yield family
                continue
            sums: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue
                key = (s.name, tuple((k, v) for k, v in s.labels.items() if k != self.label))
                sums[key] = sums.get(key, 0.0) + s.value
            out = Metric(family.name, family.documentation, family.type, family.unit)
            for (name, labels), value in sums.items():
                out.add_sample(name, dict(labels), value)
            yield out
