"""Order events."""

import aevents

ORDER = aevents.Catalog(
    {"PLACED": "order:placed", "PAID": "order:paid", "REFUNDED": "order:refunded"}
)
