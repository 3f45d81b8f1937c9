"""manage.py create_operator_groups: the console's two staff groups, with exactly these permissions.

"Stream console viewers" can look at everything (view permissions only) and act on nothing.
"Stream console operators" may also stop streams, start streams and hang up calls, redeliver
callbacks (change permissions on stream, call and callback delivery), and add, edit, mark as
default and delete applications. Rotating account tokens
stays with superusers, or with whoever is given streams.change_account by hand.
Running it again resets both groups to these lists.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand, CommandError

VIEWERS = "Stream console viewers"
OPERATORS = "Stream console operators"
VIEW = [
    "streams.view_account",
    "streams.view_hubprocess",
    "streams.view_call",
    "streams.view_stream",
    "streams.view_streamevent",
    "streams.view_application",
    "callbacks.view_callbackdelivery",
    "callbacks.view_callbackattempt",
]
ACT = [
    "streams.change_call",
    "streams.change_stream",
    "callbacks.change_callbackdelivery",
    "streams.add_application",
    "streams.change_application",
    "streams.delete_application",
]
GROUPS = {VIEWERS: VIEW, OPERATORS: VIEW + ACT}


def permissions(names: list[str]) -> list[Permission]:
    found = []
    for name in names:
        app_label, codename = name.split(".")
        try:
            found.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        except Permission.DoesNotExist:
            raise CommandError(f"permission {name} does not exist; run manage.py migrate first") from None
    return found


def create_operator_groups() -> dict[str, Group]:
    groups = {}
    for name, perms in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(permissions(perms))
        groups[name] = group
    return groups


class Command(BaseCommand):
    help = "Create (or reset) the stream console's viewer and operator groups."

    def handle(self, *args: Any, **options: Any) -> None:
        for name, group in create_operator_groups().items():
            self.stdout.write(f"{name}: {group.permissions.count()} permissions")
