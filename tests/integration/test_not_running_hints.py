"""RuntimeNotRunningError says how to start a runtime where the publish was made."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _fix(code: str) -> str:
    """Run ``code`` in a fresh interpreter (so no framework is imported) and return its output."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


CATCH = """
def fix():
    try:
        aevents.publish_nowait("order:placed")
    except aevents.RuntimeNotRunningError as error:
        assert str(error).endswith(error.fix)
        return error.fix
"""


def test_a_plain_script_is_told_to_start_one_in_an_async_function() -> None:
    """Outside any event loop the fix names `async with` and anyio.run()/asyncio.run()."""
    out = _fix("import aevents\n" + CATCH + "print(fix())")
    assert "async with aevents.EventRuntime()" in out
    assert "asyncio.run()" in out


def test_a_django_shell_is_told_about_the_shell_and_the_asgi_application() -> None:
    """With Django configured and no loop: the shell advice and get_asgi_application."""
    out = _fix(
        "import django.conf, aevents\ndjango.conf.settings.configure()\n" + CATCH + "print(fix())"
    )
    assert "Django shell" in out
    assert "get_asgi_application()" in out


def test_publish_on_commit_in_a_django_shell_gets_the_django_advice() -> None:
    """publish_on_commit, outside a runtime in a configured Django process, says the same."""
    out = _fix(
        """
        import django.conf, aevents
        django.conf.settings.configure()
        from aevents.contrib.django import publish_on_commit
        try:
            publish_on_commit("order:placed")
        except aevents.RuntimeNotRunningError as error:
            assert str(error).endswith(error.fix)
            print(error.fix)
        """
    )
    assert "Django shell" in out
    assert "get_asgi_application()" in out


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_an_app_without_the_lifespan_is_told_to_pass_it(framework: str) -> None:
    """In a Starlette or FastAPI process, on the loop: pass events_lifespan()."""
    out = _fix(
        f"import {framework}, anyio, aevents\n"
        + CATCH
        + "async def main():\n    print(fix())\nanyio.run(main)"
    )
    assert f"aevents.contrib.{framework}.events_lifespan()" in out
