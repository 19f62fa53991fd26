"""The pytest plugin: small test files run through it with pytester, on asyncio, uvloop and trio."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest_plugins = ["pytester"]

Run = Callable[[str], pytest.RunResult]


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param("trio", id="trio"),
    ]
)
def run(pytester: pytest.Pytester, request: pytest.FixtureRequest) -> Run:
    """Runs a test file in-process with the plugin, strict markers and warnings as errors."""
    pytester.makeini(
        "[pytest]\naddopts = --strict-markers -p no:cacheprovider\nfilterwarnings = error\n"
    )
    pytester.makeconftest(
        f"import pytest\n\n@pytest.fixture\ndef anyio_backend():\n    return {request.param!r}\n"
    )

    def run(source: str) -> pytest.RunResult:
        pytester.makepyfile(test_inner=source)
        return pytester.runpytest()

    return run


def test_runtime_fixture_is_running_and_module_level_publish_reaches_it(run: Run) -> None:
    """aevents_runtime is the current runtime; module-level subscribe and publish use it."""
    result = run(
        """
import pytest
import aevents
from aevents.testing import EagerRuntime, Recorder

@pytest.mark.anyio
async def test_publish(aevents_runtime, aevents_registry):
    assert aevents.current_runtime() is aevents_runtime
    assert aevents_runtime.registry is aevents_registry is aevents.default_registry
    assert not isinstance(aevents_runtime, EagerRuntime)
    recorder = Recorder()
    aevents.subscribe("inner:event", receiver=recorder)
    await aevents.publish("inner:event", payload={"n": 1})
    await aevents_runtime.drain()
    assert [event.payload for event in recorder.events] == [{"n": 1}]
"""
    )
    result.assert_outcomes(passed=1)


def test_the_runtime_fixture_runs_on_the_projects_anyio_backend(
    run: Run, pytester: pytest.Pytester, request: pytest.FixtureRequest
) -> None:
    """The runtime runs on whatever anyio_backend the project picks: asyncio, uvloop or trio."""
    result = run(
        """
import asyncio
import pytest

@pytest.mark.anyio
async def test_loop(aevents_runtime):
    await aevents_runtime.publish("inner:event")
    await aevents_runtime.drain()
    try:
        library = type(asyncio.get_running_loop()).__module__.split(".")[0]
    except RuntimeError:  # no asyncio loop: trio
        library = "trio"
    with open("backend.txt", "w") as seen:
        seen.write(f"{library} {aevents_runtime.stats().published}")
"""
    )
    result.assert_outcomes(passed=1)
    expected = {"asyncio": "asyncio", "uvloop": "uvloop", "trio": "trio"}[request.node.callspec.id]
    assert (pytester.path / "backend.txt").read_text() == f"{expected} 1"


def test_registry_changes_are_undone_after_each_test(run: Run) -> None:
    """A test's subscriptions never reach the next test; import-time ones stay for all."""
    result = run(
        """
import pytest
import aevents

@aevents.subscribe("app:ready", id="app-receiver")
async def app_receiver(event):
    pass

async def only_here(event):
    pass

def test_first(aevents_registry):
    aevents.subscribe("test:only", receiver=only_here, id="test-receiver")
    aevents.unsubscribe("app:ready", id="app-receiver")

def test_second(aevents_registry):
    assert [s.receiver_id for s in aevents_registry] == ["app-receiver"]

@pytest.mark.aevents(empty_registry=True)
def test_empty(aevents_registry):
    assert len(aevents_registry) == 0

def test_restored_after_empty():
    assert [s.receiver_id for s in aevents.default_registry] == ["app-receiver"]
"""
    )
    result.assert_outcomes(passed=4)


def test_eager_marker_makes_publish_raise_the_receiver_error(run: Run) -> None:
    """With eager=True a receiver's error fails the test at the publish that caused it."""
    result = run(
        """
import pytest
import aevents
from aevents.testing import EagerRuntime

pytestmark = [pytest.mark.anyio, pytest.mark.aevents(eager=True, workers=1)]

async def boom(event):
    raise ValueError("boom from the receiver")

async def test_eager(aevents_runtime):
    assert isinstance(aevents_runtime, EagerRuntime)
    assert aevents_runtime.workers == 1
    aevents.subscribe("x:y", receiver=boom)
    await aevents.publish("x:y")
"""
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(['*await aevents.publish("x:y")*', "E*ValueError: boom*"])


def test_closest_marker_wins_key_by_key(run: Run) -> None:
    """A test's marker overrides its module's for the keys it names and keeps the others."""
    result = run(
        """
import pytest
import aevents
from aevents.testing import EagerRuntime

pytestmark = [pytest.mark.anyio, pytest.mark.aevents(eager=True, workers=3)]

async def boom(event):
    raise ValueError("boom")

@pytest.mark.aevents(raise_errors=False, retry=aevents.RetryPolicy(attempts=1))
async def test_dead_letters_instead(aevents_runtime):
    assert isinstance(aevents_runtime, EagerRuntime)
    assert aevents_runtime.workers == 3
    aevents.subscribe("x:y", receiver=boom)
    await aevents.publish("x:y")
    [letter] = await aevents_runtime.dead_letters()
    assert letter.error_message == "boom"

@pytest.mark.aevents(eager=False)
async def test_real_runtime(aevents_runtime):
    assert not isinstance(aevents_runtime, EagerRuntime)
"""
    )
    result.assert_outcomes(passed=2)


def test_unseen_dead_letters_fail_the_test_at_teardown(run: Run) -> None:
    """Dead letters a test never looked at error its teardown; seen or allowed ones do not."""
    result = run(
        """
import pytest
import aevents

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.aevents(retry=aevents.RetryPolicy(attempts=1)),
]

async def boom(event):
    raise ValueError("boom")

async def test_unseen(aevents_runtime):
    aevents.subscribe("d:x", receiver=boom, id="boom")
    await aevents.publish("d:x")

async def test_seen(aevents_runtime):
    aevents.subscribe("d:x", receiver=boom, id="boom")
    await aevents.publish("d:x")
    await aevents_runtime.drain()
    assert len(await aevents_runtime.dead_letters()) == 1

@pytest.mark.aevents(allow_dead_letters=True)
async def test_allowed(aevents_runtime):
    aevents.subscribe("d:x", receiver=boom, id="boom")
    await aevents.publish("d:x")
"""
    )
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_unseen*",
            "*the test left dead letters it never looked at*",
            "dead letters (1):",
            "  receiver 'boom' on 'd:x' after 1 attempt: ValueError: boom",
        ]
    )


def test_capture_fixture_failure_shows_what_was_published(run: Run) -> None:
    """A failed assert_published shows pytest the expectation and the published events."""
    result = run(
        """
import pytest
import aevents

@pytest.mark.anyio
async def test_capture(aevents_capture):
    await aevents.publish("user:account:created", payload={"user_id": 1})
    aevents_capture.assert_published("user:account:created", payload={"user_id": 2})
"""
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*AssertionError: expected 'user:account:created' with payload {'user_id': 2} "
            "to be published at least once, but it was published 0 times",
            "E*published events (1):",
            "E*  user:account:created {'user_id': 1}",
        ]
    )


def test_config_fixture_sets_defaults_that_markers_override(run: Run) -> None:
    """An aevents_config fixture gives project-wide options; markers still win."""
    result = run(
        """
import pytest
from aevents.testing import EagerRuntime

pytestmark = pytest.mark.anyio

@pytest.fixture
def aevents_config():
    return {"eager": True, "buffer": 7}

async def test_defaults(aevents_runtime):
    assert isinstance(aevents_runtime, EagerRuntime)
    assert aevents_runtime.buffer == 7

@pytest.mark.aevents(eager=False)
async def test_marker_wins(aevents_runtime):
    assert not isinstance(aevents_runtime, EagerRuntime)
    assert aevents_runtime.buffer == 7
"""
    )
    result.assert_outcomes(passed=2)


def test_misuse_fails_with_a_message_saying_what_to_do(run: Run) -> None:
    """Unknown options, positional marker arguments and sync tests each get a clear error."""
    result = run(
        """
import pytest

@pytest.mark.anyio
@pytest.mark.aevents(wrokers=2)
async def test_typo(aevents_runtime):
    pass

@pytest.mark.anyio
@pytest.mark.aevents(True)
async def test_positional(aevents_runtime):
    pass

@pytest.mark.anyio
@pytest.mark.aevents(raise_errors=False)
async def test_raise_errors_without_eager(aevents_runtime):
    pass

def test_sync(aevents_runtime):
    pass
"""
    )
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "*unexpected keyword argument 'wrokers'*fixture options are*",
            "*@pytest.mark.aevents takes keyword arguments only, got (True,)*",
            "*raise_errors=...) applies to eager=True only*",
            "*aevents_runtime is for async tests: mark the test @pytest.mark.anyio*",
        ]
    )


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    """``pytest --markers`` lists the aevents marker, so --strict-markers accepts it."""
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.aevents(**options): configure the aevents_runtime*"])
