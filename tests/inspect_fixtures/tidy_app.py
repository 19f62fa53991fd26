"""An app with nothing to report: every name routed, every pattern matching."""

import aevents

BILLING = aevents.Catalog({"INVOICED": "billing:invoiced", "PAID": "billing:paid"})


@aevents.subscribe(BILLING.INVOICED)
async def send_invoice(event: aevents.Event) -> None: ...


@aevents.subscribe("billing:*")
def ledger(event: aevents.Event) -> None: ...
