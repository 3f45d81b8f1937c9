"""manage.py account_credentials AUTH_ID: prints {"auth_id", "auth_token", "ingest_token"} as JSON.

The admin never shows a token in full (it only rotates them), so the server's shell is where
an operator reads the current values to hand to the customer, as create_account prints them.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams.models import Account


class Command(BaseCommand):
    help = "Print an account's current credentials as one JSON object."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("auth_id")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            account = Account.objects.get(auth_id=options["auth_id"])
        except Account.DoesNotExist:
            raise CommandError(f"no account with auth_id {options['auth_id']!r}") from None
        self.stdout.write(
            json.dumps(
                {"auth_id": account.auth_id, "auth_token": account.auth_token, "ingest_token": account.ingest_token}
            )
        )
