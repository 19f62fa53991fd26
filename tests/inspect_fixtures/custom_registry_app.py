"""An app that subscribes on a registry of its own rather than the default one."""

import aevents

PAYROLL = aevents.Catalog({"RUN": "payroll:run", "CLOSED": "payroll:closed"})

registry = aevents.Registry()
settings = {"workers": 4}


@registry.subscribe(PAYROLL.RUN)
async def pay_everyone(event: aevents.Event) -> None: ...
