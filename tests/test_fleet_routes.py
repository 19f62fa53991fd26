"""Routes here against the live consumers': the pure comparison, the warnings, inspect."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import anyio
import pytest

import aevents
from aevents import Event, EventRuntime, MemoryStore, Registry
from aevents._fleet_routes import (
    LeftOut,
    RouteCheck,
    RouteDifference,
    compare_routes,
    left_out,
)
from aevents._store import Consumer, ConsumerId, Route, new_consumer_id

from .test_fleet import running

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def consumer(*routes: tuple[str, str]) -> Consumer:
    """A live consumer with these (pattern, receiver id) routes."""
    return Consumer(
        new_consumer_id(), tuple(Route(*route) for route in routes), NOW, NOW, NOW, leases=0
    )


async def nothing(event: Event) -> None: ...


def test_left_out_names_the_receivers_live_consumers_route_a_name_to_and_who_does() -> None:
    """For one name: each receiver routed there and not here, its patterns and consumers."""
    worker = consumer(("orders:*", "billing"), ("audit:**", "audit"))
    other = consumer(("orders:paid", "billing"), ("orders:placed", "mailer"))
    assert left_out("orders:paid", set(), [worker, other]) == (
        LeftOut("billing", ("orders:*", "orders:paid"), (worker.id, other.id)),
    )
    assert left_out("orders:placed", {"mailer"}, [worker, other]) == (
        LeftOut("billing", ("orders:*",), (worker.id,)),
    )
    assert left_out("orders:placed", {"mailer", "billing"}, [worker, other]) == ()
    assert left_out("users:created", set(), [worker, other]) == ()
    assert left_out("orders:paid", set(), []) == ()


def test_compare_routes_shows_routes_on_either_side_only(registry: Registry) -> None:
    """Routes the consumers run and this registry lacks, and the reverse; process scope is
    never compared (it does not go through the store)."""
    registry.subscribe("orders:*", nothing, id="billing")
    registry.subscribe("users:*", nothing, id="welcome")
    registry.subscribe("orders:*", nothing, id="cache", scope="process")
    worker = consumer(("orders:*", "billing"), ("orders:paid", "ledger"))
    routes = compare_routes(registry, [worker])
    assert routes.missing_here == (RouteDifference("orders:paid", "ledger", (worker.id,)),)
    assert routes.unconsumed == (RouteDifference("users:*", "welcome"),)
    assert not routes.agree
    summary = routes.summary()
    assert "orders:paid -> ledger" in summary
    assert str(worker.id) in summary
    assert "users:* -> welcome" in summary
    assert routes.to_dict()["missing_here"] == [
        {"pattern": "orders:paid", "receiver_id": "ledger", "consumers": [str(worker.id)]}
    ]
    both = compare_routes(registry, [consumer(("orders:*", "billing"), ("users:*", "welcome"))])
    assert both.agree
    assert both.summary() == "this process routes as they do (1 live consumer)"


def test_a_route_check_warns_once_per_name_and_receivers_at_most_once_a_second(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """The same disagreement is logged once; a second one within the second waits for a
    later publish of its name; a new snapshot is what later checks compare with."""
    now = [100.0]
    check = RouteCheck(registry, clock=lambda: now[0])
    worker = consumer(("orders:*", "billing"))
    check.refresh([worker])
    with caplog.at_level(logging.WARNING, "aevents.fleet"):
        assert [each.receiver_id for each in check.check("orders:paid")] == ["billing"]
        check.check("orders:paid")
        check.check("orders:placed")  # held back: within the second
        assert check.warnings == 1
        now[0] += 1.5
        check.check("orders:placed")
        check.check("orders:placed")
    assert check.warnings == 2
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "'orders:paid'" in messages[0]
    assert "billing via orders:* on " in messages[0]
    assert str(worker.id) in messages[0]
    assert "'orders:placed'" in messages[1]
    registry.subscribe("orders:*", nothing, id="billing")
    assert check.check("orders:refunded") == ()  # the registry changed: checked again
    check.refresh([])
    registry.unsubscribe("orders:*", id="billing")
    assert check.check("orders:paid") == ()  # no live consumer routes it any more


@pytest.mark.anyio
async def test_a_publisher_that_never_imported_a_receiver_gets_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A web process (consume=False, no receiver for the name) warns when it publishes a
    name a live worker routes to a receiver, once, and at start-up in its summary."""
    store = MemoryStore()
    worker_registry = Registry()
    worker_registry.subscribe("orders:*", nothing, id="billing")
    web_registry = Registry()
    web_registry.subscribe("orders:placed", nothing, id="mailer")
    worker = EventRuntime(worker_registry, store=store)
    web = EventRuntime(web_registry, store=store, consume=False)
    with caplog.at_level(logging.INFO, "aevents.fleet"):
        async with running(worker, web):
            for _ in range(3):
                await web.publish("orders:paid")
            await web.publish("users:created")
            with anyio.fail_after(10):
                await worker.drain()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    start_up, published = warnings
    assert "orders:* -> billing" in start_up
    assert "not subscribed here" in start_up
    assert "orders:placed -> mailer" in start_up
    assert "no live consumer runs" in start_up
    assert published.startswith("event 'orders:paid' is published here without the receiver")
    assert worker.stats().delivered == 0  # as the warning says: nothing reached billing


@pytest.mark.anyio
async def test_publishing_reads_no_consumers_from_the_store(registry: Registry) -> None:
    """The check compares with a snapshot taken with the heartbeat, not per publish."""
    calls = []

    class CountingStore(MemoryStore):
        async def consumers(self) -> list[Consumer]:
            calls.append(1)
            return await super().consumers()

    registry.subscribe("orders:*", nothing, id="billing")
    async with EventRuntime(registry, store=CountingStore()) as runtime:
        at_start = len(calls)
        for n in range(50):
            await runtime.publish(f"orders:n{n}")
            runtime.publish_nowait("other:name")
        assert len(calls) == at_start == 1


def test_inspect_compares_with_live_consumers_in_text_and_json(registry: Registry) -> None:
    """inspect_routes(consumers=...) adds the routes on one side only and the declared
    names they affect; each counts as a problem."""
    catalog = aevents.Catalog({"PAID": "orders:paid", "SEEN": "users:seen"}, name="shop")
    registry.subscribe("users:seen", nothing, id="tracker")
    registry.subscribe("orders:paid", nothing, id="cache", scope="process")
    worker = consumer(("orders:*", "billing"), ("users:seen", "tracker"))
    report = aevents.inspect_routes(registry, catalogs=[catalog], consumers=[worker])
    assert report.problem_count == 1  # the route to billing, missing here
    assert [(each.name, [r.receiver_id for r in each.receivers]) for each in report.left_out] == [
        ("orders:paid", ["billing"])
    ]
    text = report.to_text()
    assert "Compared with 1 live consumer" in text
    assert "Routes live consumers run that are not subscribed here" in text
    assert "orders:*  billing  " + str(worker.id) in text
    assert "Declared names those receivers would get (1)" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["fleet"]["missing_here"] == [
        {"pattern": "orders:*", "receiver_id": "billing", "consumers": [str(worker.id)]}
    ]
    assert data["fleet"]["left_out"] == [
        {
            "name": "orders:paid",
            "receivers": [
                {
                    "receiver_id": "billing",
                    "patterns": ["orders:*"],
                    "consumers": [str(worker.id)],
                }
            ],
        }
    ]
    registry.subscribe("orders:*", nothing, id="billing")
    agreed = aevents.inspect_routes(registry, catalogs=[catalog], consumers=[worker])
    assert agreed.ok
    assert agreed.left_out == ()
    assert "every route agrees" in agreed.to_text()
    assert "fleet" not in aevents.inspect_routes(registry, catalogs=[catalog]).to_dict()


def test_a_consumer_id_prints_in_the_reports(registry: Registry) -> None:
    """Consumers are named as host:pid:token, as the worker command logs them."""
    worker = Consumer(ConsumerId("h", 1, "t"), (Route("a:*", "r"),), NOW, NOW, NOW, 0)
    assert "a:* -> r (h:1:t)" in compare_routes(registry, [worker]).summary()


@pytest.mark.anyio
async def test_a_lone_runtime_agrees_with_itself_and_warns_about_nothing(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """A consuming runtime counts itself at start-up and is never left out by its own routes;
    a publisher alone is told its routes wait for a consumer."""
    registry.subscribe("orders:*", nothing, id="billing")
    store = MemoryStore()
    with caplog.at_level(logging.INFO, "aevents.fleet"):
        async with EventRuntime(registry, store=store) as runtime:
            await runtime.publish("orders:paid")
        async with EventRuntime(registry, store=store, consume=False) as web:
            await web.publish("orders:paid")
    routes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("routes:")]
    assert routes == [
        "routes: this process routes as they do (1 live consumer)",
        "routes: 1 route here that no live consumer runs, so their deliveries wait in the "
        "store: orders:* -> billing",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records)
    assert compare_routes(Registry(), []).summary() == "no live consumer to compare routes with"
