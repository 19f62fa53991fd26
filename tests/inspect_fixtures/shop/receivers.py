"""The shop's receivers, with the three mistakes the inspector reports."""

import aevents

from .orders import ORDER


@aevents.subscribe(ORDER.PLACED)
async def reserve_stock(event: aevents.Event) -> None: ...


@aevents.subscribe(ORDER.PAID)
async def send_receipt(event: aevents.Event) -> None: ...


@aevents.subscribe("order:refund")  # typed by hand instead of ORDER.REFUNDED, and misspelt
async def restock(event: aevents.Event) -> None: ...


@aevents.subscribe("shipping:*:dispatched")
async def notify_customer(event: aevents.Event) -> None: ...


@aevents.subscribe("invoice:**")  # no catalog declares an invoice event
async def archive_invoice(event: aevents.Event) -> None: ...


def audit(event: aevents.Event) -> None: ...


aevents.subscribe("order:**", receiver=audit, id="audit")
