"""The example's endpoints."""

from blog import views
from django.urls import path

urlpatterns = [
    path("comments/async/", views.post_comment_async),
    path("comments/sync/", views.post_comment_sync),
    path("articles/", views.create_article),
    path("articles/async/", views.create_article_async),
    path("reports/", views.request_reports),
    path("events/", views.received_events),
    path("events/drain/", views.drain_events),
]
