"""Django's admin autodiscovery imports `<app>.admin`: the console's ModelAdmins live in streams.console."""

from __future__ import annotations

from streams.console import admin as console_admin  # noqa: F401  (registers the ModelAdmins)
