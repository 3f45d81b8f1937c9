"""The Celery app: `celery -A streamhub worker` and `celery -A streamhub beat`."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "streamhub.settings")

app = Celery("streamhub")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
