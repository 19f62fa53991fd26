"""The shop's ASGI entry point, named as uvicorn takes it: ``shop.main:app``."""

from typing import Any

from . import orders, receivers, shipping

__all__ = ["app", "orders", "receivers", "shipping"]  # imported to declare and subscribe


async def app(scope: Any, receive: Any, send: Any) -> None: ...
