"""The URLs of the Django admin tests (tests/test_dashboard_django.py)."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
