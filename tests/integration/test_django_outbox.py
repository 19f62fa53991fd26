"""The outbox and the inbox through Django on PostgreSQL, with real processes and SIGKILL.

Each test runs ``examples/django_outbox`` on the test server in two schemas of its
own (the shop's tables, and the store's), migrated by ``manage.py migrate``.
Publishers are ``manage.py shell`` processes that run no runtime; deliveries are
run by ``manage.py aevents_worker`` processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ..pg import drop_schema, schema_for

pytest.importorskip("django")

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "examples" / "django_outbox"
HERE = Path(__file__).resolve().parent
RECEIVER = "orders.record_shipment"


class Shop:
    """The example project on one test's schemas."""

    def __init__(self, dsn: str, directory: Path) -> None:
        self.dsn = dsn
        self.directory = directory
        self.schema = schema_for(directory)
        self.events = f"{self.schema}_events"
        self.settings = "shop.settings"
        self.workers = 0
        self.started: list[Worker] = []

    def env(self, **extra: str) -> dict[str, str]:
        paths = [str(PROJECT), str(HERE), str(self.directory), str(ROOT)]
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(paths),
            "SHOP_DATABASE_URL": self.dsn,
            "SHOP_SCHEMA": self.schema,
            "SHOP_EVENTS_SCHEMA": self.events,
            "DJANGO_SETTINGS_MODULE": self.settings,
            **extra,
        }

    def manage(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=PROJECT,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def shell(self, code: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return self.manage("shell", "-c", code, **extra)

    def worker(self, **extra: str) -> Worker:
        self.workers += 1
        worker = Worker(self.directory / f"worker-{self.workers}.log", self.env(**extra))
        self.started.append(worker)
        return worker

    def query(self, text: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(text.format(s=self.schema, e=self.events)).fetchall()

    def not_done(self) -> int:
        rows = self.query("SELECT count(*) FROM {e}.deliveries WHERE state <> 1")
        return int(rows[0][0])


class Worker:
    """``manage.py aevents_worker``, its log in a file (never a pipe that could fill)."""

    def __init__(self, log: Path, env: dict[str, str]) -> None:
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "aevents_worker", "--concurrency", "4"],
                cwd=PROJECT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM, and a clean exit after draining."""
        assert self.terminate() == 0, self.output()

    def terminate(self) -> int:
        """SIGTERM; the exit status once it is gone."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def shop(postgres_dsn: str, tmp_path: Path) -> Iterator[Shop]:
    """The example's tables migrated into a fresh schema; both schemas dropped after."""
    project = Shop(postgres_dsn, tmp_path)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(project.schema)))
    try:
        yield project
    finally:
        for worker in project.started:  # a test that failed midway leaves none running
            if worker.running():
                worker.kill()
        drop_schema(postgres_dsn, project.schema)
        drop_schema(postgres_dsn, project.events)


def _migrate(shop: Shop) -> None:
    result = shop.manage("migrate", "--run-syncdb")
    assert result.returncode == 0, result.stderr


def _until_done(shop: Shop, worker: Worker, deadline: float) -> None:
    """Wait until no delivery is left to do (work of another process: polled)."""
    while shop.not_done():
        assert worker.running(), worker.output()
        assert time.monotonic() < deadline, "the deliveries were not done in time"
        time.sleep(0.05)


def test_commit_delivers_rollback_leaves_nothing_and_a_kill_after_commit_loses_nothing(
    shop: Shop,
) -> None:
    """Orders placed by processes that run no runtime: the committed one and the one whose
    process was SIGKILLed right after its commit are delivered by a worker; the rolled
    back one left no event, no delivery and no row."""
    _migrate(shop)
    placed = shop.shell(
        "import json\n"
        "from orders.services import OrderRejected, place_order\n"
        "kept = place_order('book')\n"
        "try:\n"
        "    place_order('pen', reject=True)\n"
        "except OrderRejected:\n"
        "    print(json.dumps({'kept': kept}))\n"
    )
    assert placed.returncode == 0, placed.stderr
    kept = json.loads(placed.stdout.strip().splitlines()[-1])["kept"]
    killed = shop.shell(
        "import os, signal\n"
        "from django.db import transaction\n"
        "from orders.services import place_order\n"
        "with transaction.atomic():\n"
        "    place_order('lamp')\n"
        "    transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))\n"
        "print('not reached')\n"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "not reached" not in killed.stdout
    orders = shop.query("SELECT id, item FROM {s}.orders_order ORDER BY id")
    assert [item for _, item in orders] == ["book", "lamp"]
    events = shop.query("SELECT name, body FROM {e}.events ORDER BY seq")
    placed_ids = [
        json.loads(bytes(body))["payload"]["id"]
        for name, body in events
        if name == "shop:order:placed"
    ]
    assert placed_ids == [order_id for order_id, _ in orders]
    assert [name for name, _ in events].count("shop:order:saved") == 2  # mirror_signal(outbox)
    assert kept == orders[0][0]

    worker = shop.worker()
    try:
        _until_done(shop, worker, time.monotonic() + 30)
    finally:
        worker.stop()
    assert "another consumer" not in worker.output()
    shipments = shop.query("SELECT order_id FROM {s}.orders_shipment ORDER BY order_id")
    assert [row[0] for row in shipments] == placed_ids


# Its own deadline is 75 s of restarts (plus the migrations before): the default 60 s
# would cut it short on a loaded machine before it could say how far it got.
@pytest.mark.timeout(150)
def test_an_inbox_receiver_killed_anywhere_leaves_exactly_one_row_per_event(shop: Shop) -> None:
    """Worker processes SIGKILLed before the receiver's write, between its write and the
    commit, after the commit, and at random moments, are restarted until nothing is
    left: every event has exactly one row."""
    # AEVENTS_TEST_SEED=N replays the run a failure names.
    seed = int(os.environ.get("AEVENTS_TEST_SEED") or random.randrange(1 << 30))
    chance = random.Random(seed)
    crash = shop.directory / "crashed"
    crash.mkdir()
    (shop.directory / "crash_settings.py").write_text(
        "from shop.settings import *  # noqa: F403\n"
        "INSTALLED_APPS = [*INSTALLED_APPS, 'outbox_crash']  # noqa: F405\n"
        "from aevents import RetryPolicy\n"
        "# a killed worker's leases run out soon, and the next one polls often; and the\n"
        "# kills from outside, which may end any attempt running or started ahead, count\n"
        "# attempts too: the example's receiver gets as many to spare as outbox_crash's\n"
        "RETRY = RetryPolicy(attempts=100, initial_delay=0.01)\n"
        "AEVENTS = {**AEVENTS, 'lease': 1.0, 'retry': RETRY}  # noqa: F405\n"
        "AEVENTS['store'] = {**AEVENTS['store'], 'poll_interval': 0.1}\n"
    )
    shop.settings = "crash_settings"
    _migrate(shop)
    placed = shop.shell(
        "import json\n"
        "from orders.services import place_order\n"
        "print(json.dumps([place_order(f'item {n}') for n in range(24)]))\n"
    )
    assert placed.returncode == 0, placed.stderr
    order_ids: list[int] = json.loads(placed.stdout.strip().splitlines()[-1])
    points = ["before", "between", "after"] * 3 + [None] * (len(order_ids) - 9)
    chance.shuffle(points)
    plan = {str(order): point for order, point in zip(order_ids, points, strict=True) if point}
    extra = {"INBOX_CRASH_PLAN": json.dumps(plan), "INBOX_CRASH_DIR": str(crash)}

    deadline = time.monotonic() + 75
    rounds = 0
    killed: set[int] = set()  # pids of the workers that died of SIGKILL
    print(f"seed {seed}")  # shown if pytest's own timeout cuts the test short
    while shop.not_done():
        assert time.monotonic() < deadline, f"not finished (seed {seed}, {rounds} rounds)"
        rounds += 1
        worker = shop.worker(**extra)
        kill_at = time.monotonic() + chance.uniform(0.3, 2.5) if chance.random() < 0.3 else None
        while worker.running() and shop.not_done():
            dead = shop.query("SELECT count(*) FROM {e}.dead_letters")[0][0]
            if dead:
                worker.kill()
                pytest.fail(f"{dead} dead letters (seed {seed}):\n{worker.output()[-4000:]}")
            if time.monotonic() >= deadline:
                worker.kill()
                pytest.fail(
                    f"not finished (seed {seed}, {rounds} rounds, {shop.not_done()} "
                    f"deliveries left); the last worker's log:\n{worker.output()[-4000:]}"
                )
            if kill_at is not None and time.monotonic() >= kill_at:
                worker.kill()  # at a random moment, from outside
                break
            time.sleep(0.05)
        if worker.running():
            # A planned crash may come while it drains (or just after the last commit,
            # in an on_commit callback): that death is one of the crashes, not a failure.
            code = worker.terminate()
            if code == -signal.SIGKILL:
                marked = {path.read_text() for path in crash.iterdir()}
                assert str(worker.process.pid) in marked, f"seed {seed}: {worker.output()}"
                killed.add(worker.process.pid)
            else:
                assert code == 0, worker.output()
        else:
            assert worker.process.returncode == -signal.SIGKILL, worker.output()
            killed.add(worker.process.pid)

    crashed = {path.name for path in crash.iterdir()}
    planned = {f"{order}-{point}" for order, point in plan.items()}
    assert crashed <= planned, f"seed {seed}"
    # A crash after the commit runs in an on_commit callback: a kill from outside between
    # the commit and the callback finishes the delivery with no crash, and rightly so.
    assert {m for m in planned if not m.endswith("-after")} <= crashed, f"seed {seed}"
    # Every planned crash ended its process. Deliveries run on threads at once, so two can
    # reach their crash points together: one death, two markers.
    # (A kill from outside between the marker's creation and its pid leaves it empty.)
    crashed_pids = {int(pid) for name in crashed if (pid := (crash / name).read_text())}
    assert crashed_pids <= killed, f"seed {seed}"
    effects = shop.query(
        "SELECT order_id, count(*) FROM {s}.outbox_crash_effect GROUP BY order_id ORDER BY 1"
    )
    assert effects == [(order, 1) for order in order_ids], f"seed {seed}"
    shipments = shop.query(
        "SELECT order_id, count(*) FROM {s}.orders_shipment GROUP BY order_id ORDER BY 1"
    )
    assert shipments == [(order, 1) for order in order_ids], f"seed {seed}"
    assert shop.query("SELECT count(*) FROM {e}.dead_letters") == [(0,)]
