"""manage.py create_account NAME [--rate 0.003]: prints {"auth_id": …, "auth_token": …} as JSON."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams.models import Account


class Command(BaseCommand):
    help = "Create an account and print its credentials as one JSON object."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--rate", default="0.003", help="billing rate per minute (default 0.003)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            rate = Decimal(options["rate"])
        except InvalidOperation:
            raise CommandError(f"--rate {options['rate']!r} is not a number") from None
        if rate < 0 or not rate.is_finite():
            raise CommandError("--rate must be zero or positive")
        account = Account.objects.create(name=options["name"], rate_per_minute=rate)
        self.stdout.write(
            json.dumps(
                {"auth_id": account.auth_id, "auth_token": account.auth_token, "ingest_token": account.ingest_token}
            )
        )
