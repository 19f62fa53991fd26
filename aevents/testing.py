"""Helpers for testing aevents applications and extensions (this module imports pytest).

``StoreConformance`` and ``PersistentStoreConformance`` are the store
protocol's test suite; they live in ``aevents._conformance``.
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("aevents._conformance")  # before the import, so asserts explain
from ._conformance import PersistentStoreConformance, StoreConformance  # noqa: E402

__all__ = ["PersistentStoreConformance", "StoreConformance"]
