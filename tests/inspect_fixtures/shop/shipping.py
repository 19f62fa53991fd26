"""Shipping events."""

import aevents

SHIPPING = aevents.Catalog(
    {"DISPATCHED": "shipping:parcel:dispatched", "DELIVERED": "shipping:parcel:delivered"}
)
