from __future__ import annotations

from django.apps import AppConfig


class CallbacksConfig(AppConfig):
    name = "callbacks"
    verbose_name = "Status callbacks"
    default_auto_field = "django.db.models.BigAutoField"
