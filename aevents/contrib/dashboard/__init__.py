"""An operations dashboard for a running ``EventRuntime``: a Starlette app to mount.

::

    from aevents.contrib.dashboard import Dashboard

    dashboard = Dashboard(authorize=lambda request: request.session.get("staff") is True)
    app = Starlette(routes=[Mount("/_events", app=dashboard), ...], lifespan=events_lifespan())

It shows the runtime's counters and rates, a chart of throughput and failures,
per-receiver latencies (with ``EventRuntime(metrics=True)``), the receivers and
their routes, the consumers and leases of a shared store, and the dead letters,
which it can redeliver or discard after a confirmation. It refuses to be built
without an ``authorize`` hook unless told ``allow_everyone=True``; actions are
POSTs with a CSRF token; everything an event carries is rendered escaped. See
the dashboard guide (docs/dashboard.md).
"""

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ModuleNotFoundError as error:  # pragma: no cover - exercised in a subprocess
    if error.name is None or error.name.partition(".")[0] not in {"starlette", "jinja2"}:
        raise
    raise ImportError(
        "aevents.contrib.dashboard needs Starlette and Jinja2: pip install 'aevents[dashboard]'"
    ) from error

from ._actions import Action
from ._app import Actor, Authorize, Dashboard

__all__ = ["Action", "Actor", "Authorize", "Dashboard"]
