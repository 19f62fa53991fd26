"""The shop's one URL: placing an order."""

from django.urls import path
from orders.views import place_order_view

urlpatterns = [path("orders/", place_order_view)]
