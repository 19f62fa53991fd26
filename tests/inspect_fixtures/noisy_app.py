"""An app that prints while it is imported: none of it may reach the report on stdout."""

import aevents

print("connecting to the database...")

NOISE = aevents.Catalog({"MADE": "noise:made"})


@aevents.subscribe(NOISE.MADE)
async def listen(event: aevents.Event) -> None: ...
