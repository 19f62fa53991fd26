"""An app whose import fails, as a missing setting makes it fail."""

raise RuntimeError("DATABASE_URL is not set")
