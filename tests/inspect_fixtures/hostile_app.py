"""Receiver ids and a catalog label with control characters, which must print escaped."""

import aevents

HOSTILE = aevents.Catalog({"SEEN": "hostile:seen"}, name="label\x1b[2J")


def spy(event: aevents.Event) -> None: ...


aevents.subscribe(HOSTILE.SEEN, receiver=spy, id="spy\x1b[31m")
aevents.subscribe("hostile:unseen", receiver=spy, id="spy\x1b[31m")
