"""OpenAPI additions: drf-spectacular knows DRF's own BasicAuthentication, not our subclass.

Imported by streams.api.urls, so the extension is registered before any schema is built.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class AccountBasicScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """Describes the Basic scheme in the OpenAPI schema (drf-spectacular only knows DRF's own class)."""

    target_class = "streams.api.auth.AccountBasicAuthentication"
    name = "basicAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "basic",
            "description": "User name: the account's auth_id; password: its auth_token.",
        }
