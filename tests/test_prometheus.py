"""The Prometheus exposition: a real scrape of a running runtime, parsed as Prometheus would."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import anyio
import anyio.to_thread
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from aevents import ConfigurationError, Event, EventRuntime, Metrics, Registry, RetryPolicy
from aevents.contrib.prometheus import register

ONCE = RetryPolicy(attempts=1)

# A meta path finder that makes a package look uninstalled, in a subprocess.
BLOCK_IMPORT = """
import importlib.abc, sys
class Uninstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] == {package!r}:
            raise ModuleNotFoundError(f"No module named {{fullname!r}}", name=fullname)
        return None
sys.meta_path.insert(0, Uninstalled())
"""


def scrape(registry: CollectorRegistry) -> Iterator[Sample]:
    """Every sample of a text exposition, read back by prometheus_client's own parser."""
    text = generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        yield from family.samples


def value(samples: list[Sample], name: str, **labels: str) -> float:
    (found,) = [sample for sample in samples if sample.name == name and sample.labels == labels]
    return found.value


@pytest.mark.anyio
async def test_a_scrape_exposes_each_subscriptions_counters_and_histograms(
    registry: Registry,
) -> None:
    """Counters and histogram series carry receiver and pattern labels and add up."""

    async def orders(event: Event) -> None:
        if event.payload.get("fail"):
            raise ValueError("refused")

    registry.subscribe("order:*", orders, id="orders", retry=ONCE)
    metrics = Metrics()
    prometheus = CollectorRegistry()
    async with EventRuntime(registry, middleware=[metrics]) as runtime:
        register(runtime, prometheus)
        await runtime.publish("order:placed")
        await runtime.publish("order:shipped")
        await runtime.publish("order:placed", payload={"fail": True})
        await runtime.publish("nobody:listens")
        with anyio.fail_after(5):
            await runtime.drain()
        samples = list(scrape(prometheus))
    labels = {"receiver": "orders", "pattern": "order:*"}
    assert value(samples, "aevents_events_published_total") == 4
    assert value(samples, "aevents_events_unrouted_total") == 1
    assert value(samples, "aevents_deliveries_total", **labels) == 3
    assert value(samples, "aevents_deliveries_delivered_total", **labels) == 2
    assert value(samples, "aevents_attempts_failed_total", **labels) == 1
    assert value(samples, "aevents_delivery_duration_seconds_count", **labels) == 3
    buckets = [
        sample
        for sample in samples
        if sample.name == "aevents_delivery_duration_seconds_bucket"
        and sample.labels["receiver"] == "orders"
    ]
    assert [float(sample.labels["le"]) for sample in buckets] == [*metrics.buckets, float("inf")]
    counts = [sample.value for sample in buckets]
    assert counts == sorted(counts)
    assert counts[-1] == 3
    assert value(samples, "aevents_delivery_latency_seconds_count", **labels) >= 1
    assert value(samples, "aevents_delivery_duration_seconds_sum", **labels) > 0


@pytest.mark.anyio
async def test_the_gauges_show_what_is_queued_and_in_flight_at_scrape_time(
    registry: Registry,
) -> None:
    """With the only worker held, one delivery is in flight and the next two queued."""
    started, release = anyio.Event(), anyio.Event()

    async def held(event: Event) -> None:
        started.set()
        await release.wait()

    registry.subscribe("job:held", held, id="held")
    prometheus = CollectorRegistry()
    async with EventRuntime(registry, workers=1, middleware=[Metrics()]) as runtime:
        register(runtime, prometheus)
        for _ in range(3):
            await runtime.publish("job:held")
        with anyio.fail_after(5):
            await started.wait()
        samples = list(scrape(prometheus))
        release.set()
    assert value(samples, "aevents_deliveries_in_flight") == 1
    assert value(samples, "aevents_deliveries_queued") == 2
    assert value(samples, "aevents_deliveries_retrying") == 0


@pytest.mark.anyio
async def test_an_http_scrape_from_another_thread_reads_the_running_runtime(
    registry: Registry,
) -> None:
    """prometheus_client's own HTTP server, scraped over a socket, serves the live figures."""

    async def receiver(event: Event) -> None:
        pass

    registry.subscribe("job:run", receiver, id="job-runner")
    prometheus = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=prometheus)
    try:
        async with EventRuntime(registry, middleware=[Metrics()]) as runtime:
            register(runtime, prometheus)
            for _ in range(5):
                await runtime.publish("job:run")
            with anyio.fail_after(5):
                await runtime.drain()

            def get() -> str:
                url = f"http://127.0.0.1:{server.server_port}/metrics"
                with urllib.request.urlopen(url, timeout=10) as response:
                    return str(response.read().decode())

            with anyio.fail_after(20):
                text = await anyio.to_thread.run_sync(get)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert 'aevents_deliveries_delivered_total{pattern="job:run",receiver="job-runner"} 5.0' in (
        text
    )


@pytest.mark.anyio
async def test_label_values_are_escaped_in_the_exposition(registry: Registry) -> None:
    """A receiver id with quotes, a backslash and a newline reads back unchanged."""
    receiver_id = 'odd "id" \\ with\na newline'

    async def receiver(event: Event) -> None:
        pass

    registry.subscribe("job:run", receiver, id=receiver_id)
    prometheus = CollectorRegistry()
    async with EventRuntime(registry, middleware=[Metrics()]) as runtime:
        register(runtime, prometheus)
        await runtime.publish("job:run")
        with anyio.fail_after(5):
            await runtime.drain()
        samples = list(scrape(prometheus))
    assert value(samples, "aevents_deliveries_total", receiver=receiver_id, pattern="job:run") == 1


@pytest.mark.anyio
async def test_registering_a_runtime_without_metrics_is_refused(registry: Registry) -> None:
    """Without an aevents.Metrics middleware there is nothing to expose: a clear error."""
    async with EventRuntime(registry) as runtime:
        with pytest.raises(ConfigurationError, match=r"no aevents\.Metrics middleware"):
            register(runtime, CollectorRegistry())


@pytest.mark.anyio
async def test_a_second_runtime_on_one_registry_is_refused_as_duplicate_series(
    registry: Registry,
) -> None:
    """The collector describes its families, so the registry refuses a clash up front."""
    prometheus = CollectorRegistry()
    async with EventRuntime(registry, middleware=[Metrics()]) as runtime:
        register(runtime, prometheus)
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            register(runtime, prometheus)


@pytest.mark.anyio
async def test_register_defaults_to_the_global_registry_and_can_be_undone(
    registry: Registry,
) -> None:
    """register(runtime) adds to prometheus_client's REGISTRY; unregister takes it away."""
    async with EventRuntime(registry, middleware=[Metrics()]) as runtime:
        collector = register(runtime)
        try:
            assert b"aevents_deliveries_queued 0.0" in generate_latest()
        finally:
            REGISTRY.unregister(collector)
    assert b"aevents_" not in generate_latest()


def test_importing_without_prometheus_client_says_how_to_install_it() -> None:
    """With prometheus-client not installed, the import fails with the pip extra to add."""
    code = BLOCK_IMPORT.format(package="prometheus_client") + "import aevents.contrib.prometheus\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert (
        "ImportError: aevents.contrib.prometheus needs prometheus-client: "
        "pip install 'aevents[prometheus]'"
    ) in result.stderr


def test_the_core_never_imports_prometheus_client() -> None:
    """Running a runtime with metrics loads neither prometheus_client nor the contrib module."""
    code = (
        "import sys, anyio, aevents\n"
        "async def main():\n"
        "    async with aevents.EventRuntime(metrics=True):\n"
        "        await aevents.publish('a:b')\n"
        "anyio.run(main)\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] == 'prometheus_client'"
        " or m == 'aevents.contrib.prometheus'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
