"""The examples run as real processes on every backend, and the docs quote them."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_example(script: str, backend: str) -> subprocess.CompletedProcess[str]:
    """Run examples/<script> on ``backend`` as a real process, from the project root."""
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), backend],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_the_demo_runs_and_shows_every_feature(backend: str) -> None:
    """examples/demo.py exits 0 and prints what each part of the tour promises."""
    result = _run_example("demo.py", backend)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"demo on {backend}" in out
    assert "welcome mail for user 1" in out
    assert "welcome mail for user 2" in out  # published from a thread
    assert "audit user:account:created (off the loop: True)" in out
    assert "typo caught: catalog '__main__' has no event 'ACOUNT_CREATED'" in out
    assert "payload['score']: float nan is not JSON" in out
    assert "verified ada@example.com on attempt 3" in out
    assert "retries of verify_email saw attempts [1, 2, 3]" in out
    assert out.count("dead letter: __main__:broken_crm_sync on user:welcome:sent") == 2
    assert "stats: published=5 delivered=8 failed=4 retried=2 dead=2" in out
    assert "log WARNING receiver '__main__:verify_email' failed" in out
    assert "Traceback" not in out + result.stderr


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_the_ordering_example_keeps_each_account_in_order(backend: str) -> None:
    """examples/ordering.py applies each account's moves in order, once, and pays once."""
    result = _run_example("ordering.py", backend)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"ordering example on {backend}"
    account_1 = [line for line in lines if line.startswith("account:1:")]
    account_2 = [line for line in lines if line.startswith("account:2:")]
    assert account_1 == [
        "account:1: deposit 100",
        "account:1: withdraw 30",
        "account:1: withdraw 60",
    ]
    assert account_2 == ["account:2: deposit 50", "account:2: withdraw 20"]
    assert "attempt 2 (replay: False): already applied" in lines
    assert "balances: {'account:1': 10, 'account:2': 30}" in lines
    assert "same event: True, repeated: 1" in lines
    assert lines.count("receipt for order 7") == 1
    assert "lost the acknowledgement" in result.stderr  # the failed attempt was logged


def test_the_ordering_docs_quote_the_example() -> None:
    """Each snippet of the ordering and idempotency sections is copied from examples/ordering.py."""
    concepts = (ROOT / "docs" / "concepts.md").read_text()
    start = concepts.index("### Ordering keys")
    sections = concepts[start:]
    example = (ROOT / "examples" / "ordering.py").read_text()
    snippets = re.findall(r"```python\n(.*?)```", sections, re.S)
    assert len(snippets) == 3
    for snippet in snippets:
        assert any(textwrap.indent(snippet, " " * depth) in example for depth in (0, 4, 8)), snippet


def test_the_observability_docs_quote_the_example() -> None:
    """Each Python snippet of the observability guide is copied from examples/observability.py."""
    section = (ROOT / "docs" / "observability.md").read_text()
    example = (ROOT / "examples" / "observability.py").read_text()
    snippets = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(snippets) >= 4
    for snippet in snippets:
        assert any(textwrap.indent(snippet, " " * depth) in example for depth in (0, 4, 8)), snippet


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_the_observability_example_runs_and_shows_every_part(backend: str) -> None:
    """examples/observability.py (the guide's snippets) prints metrics, a scrape and spans."""
    result = _run_example("observability.py", backend)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"observability example on {backend}" in out
    assert "charging order 1 for tenant acme" in out
    assert "receipt for shop:order:paid sent to tenant acme" in out
    assert "slow: charge-card took" in out
    assert "charge-card: published=1 delivered=1 failed=0 p99 duration=" in out
    assert "send-receipt: published=2 delivered=2 failed=1 p99 duration=" in out
    assert (
        'scrape: aevents_deliveries_delivered_total{pattern="shop:order:*",receiver="send-receipt"}'
        " 2.0"
    ) in out
    tree = out[out.index("spans of the order's trace:") :].splitlines()[1:]
    assert tree == [
        "  internal POST /orders",
        "    producer publish shop:order:placed",
        "      consumer process shop:order:placed [charge-card, attempt 1, UNSET]",
        "        internal call payment provider",
        "        producer publish shop:order:paid",
        "          consumer process shop:order:paid [send-receipt, attempt 1, ERROR]",
        "          consumer process shop:order:paid [send-receipt, attempt 2, UNSET]",
        "      consumer process shop:order:placed [send-receipt, attempt 1, UNSET]",
    ]
    assert "Traceback" not in out + result.stderr


def test_the_plain_psycopg_outbox_example_ships_the_committed_order_once(
    postgres_dsn: str, tmp_path: Path
) -> None:
    """examples/postgres_outbox.py, on asyncio and trio: the committed order is shipped once
    through the inbox, and the rolled back one never existed."""
    from ..pg import drop_schema, schema_for

    schema = schema_for(tmp_path)
    script = str(ROOT / "examples" / "postgres_outbox.py")
    try:
        for backend in ("asyncio", "trio"):
            result = subprocess.run(
                [sys.executable, script, backend, postgres_dsn, schema],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.splitlines() == ["shipped order 1", "delivered=1"]
    finally:
        drop_schema(postgres_dsn, schema)
        drop_schema(postgres_dsn, f"{schema}_events")
