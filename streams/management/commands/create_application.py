"""manage.py create_application AUTH_ID NAME --answer-url URL [...]: prints {"app_id": …} as JSON.

The same rules as the REST API's create (streams.core.application): answer_url is required,
hangup_url defaults to it, `--default` makes it the account's default application.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams import services
from streams.core.application import ApplicationParamError, validate_application
from streams.models import Account, Application


class Command(BaseCommand):
    help = "Create a Plivo application for an account and print its app_id as JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("auth_id", help="the account's auth_id")
        parser.add_argument("name", help="the application's name")
        parser.add_argument("--answer-url", required=True, help="http(s) URL that answers with Plivo XML")
        parser.add_argument("--answer-method", default="POST", help="GET or POST (default POST)")
        parser.add_argument("--hangup-url", help="http(s) URL told of the call's end (default: the answer URL)")
        parser.add_argument("--hangup-method", default="POST", help="GET or POST (default POST)")
        parser.add_argument("--fallback-answer-url", help="used after the answer URL's tries fail")
        parser.add_argument("--fallback-method", default="POST", help="GET or POST (default POST)")
        parser.add_argument(
            "--default", action="store_true", help="the account's default app (runs calls that name nothing)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        account = Account.objects.filter(auth_id=options["auth_id"]).first()
        if account is None:
            raise CommandError(f"no account {options['auth_id']}")
        given = {
            "app_name": options["name"],
            "answer_url": options["answer_url"],
            "answer_method": options["answer_method"],
            "hangup_url": options["hangup_url"],
            "hangup_method": options["hangup_method"],
            "fallback_answer_url": options["fallback_answer_url"],
            "fallback_method": options["fallback_method"],
            "default_number_app": options["default"],
        }
        try:
            fields = validate_application(
                given, creating=True, forbid_private_callbacks=settings.STREAMHUB_FORBID_PRIVATE_CALLBACKS
            )
        except ApplicationParamError as exc:
            raise CommandError(str(exc)) from None
        app = services.application_save(application=Application(account=account, **fields))
        self.stdout.write(json.dumps({"app_id": app.app_id, "app_name": app.app_name, "answer_url": app.answer_url}))
