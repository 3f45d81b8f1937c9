from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from streams.console.views import login_view
from streams.live import health, metrics

urlpatterns = [
    path("admin/login/", login_view),  # the admin's own sign-in, throttled (before admin.site.urls takes the path)
    path("admin/", admin.site.urls),
    path("v1/", include("streams.api.urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
]
