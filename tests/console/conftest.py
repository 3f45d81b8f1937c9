"""Console actors and records: a superuser, a read-only viewer, an operator, and streams in every state."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from callbacks.models import CallbackAttempt, CallbackDelivery
from streams import services
from streams.core.validation import validate_stream_params
from streams.management.commands.create_operator_groups import OPERATORS, VIEWERS, create_operator_groups
from streams.models import Account, Call, Stream

PASSWORD = "console-password-1"
URL = "wss://bot.example.com/ws"
CALLBACK_URL = "https://app.example.com/stream-status"


def make_staff(username: str, *, group: str | None = None, superuser: bool = False) -> User:
    user = User.objects.create_user(username=username, password=PASSWORD, is_staff=True, is_superuser=superuser)
    if group:
        user.groups.add(create_operator_groups()[group])
    return user


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def superuser(db: None) -> User:
    return make_staff("root", superuser=True)


@pytest.fixture
def viewer(db: None) -> User:
    return make_staff("viewer", group=VIEWERS)


@pytest.fixture
def operator(db: None) -> User:
    return make_staff("operator", group=OPERATORS)


@pytest.fixture
def su_client(superuser: User) -> Client:
    return client_for(superuser)


@pytest.fixture
def viewer_client(viewer: User) -> Client:
    return client_for(viewer)


@pytest.fixture
def operator_client(operator: User) -> Client:
    return client_for(operator)


def open_call(account: Account, *, from_number: str = "", to_number: str = "") -> Call:
    return services.call_open(account=account, call_uuid=uuid.uuid4(), from_number=from_number, to_number=to_number)


def start_stream(call: Call, *, started: bool = True, **params: object) -> Stream:
    stream = services.stream_create(
        call=call, params=validate_stream_params({"service_url": URL, **params}), notify_session=False
    )
    if started:
        services.stream_mark_started(stream=stream)
        stream.refresh_from_db()
    return stream


@pytest.fixture
def call(account: Account) -> Call:
    return open_call(account, from_number="+14155550100", to_number="+14155550199")


@pytest.fixture
def live_stream(call: Call) -> Stream:
    return start_stream(call)


@pytest.fixture
def ended_stream(account: Account) -> Stream:
    """A finished stream with a degraded episode, buffer samples, and a failed then a delivered callback."""
    call = open_call(account, from_number="+14155550111", to_number="+14155550122")
    stream = start_stream(call, status_callback_url=CALLBACK_URL, service_url="wss://slow.example.com/ws")
    services.stream_degraded(stream=stream, usage=30)
    services.stream_end(stream=stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    Stream.objects.filter(pk=stream.pk).update(
        buffer_samples=[[0, 0], [1, 12.5], [2, 31], [3, 44], [4, 20], [5, 0]], frames_sent=250
    )
    deliveries = list(CallbackDelivery.objects.filter(stream=stream).order_by("id"))
    start, degraded, stop = deliveries
    now = timezone.now()
    CallbackDelivery.objects.filter(pk=start.pk).update(state="delivered", attempt_count=1, delivered_at=now)
    CallbackAttempt.objects.create(delivery=start, number=1, status_code=200, latency_ms=12)
    CallbackDelivery.objects.filter(pk=stop.pk).update(state="failed", attempt_count=2, last_error="HTTP 404")
    CallbackAttempt.objects.create(delivery=stop, number=1, status_code=503, latency_ms=40, error="HTTP 503")
    CallbackAttempt.objects.create(
        delivery=stop, number=2, status_code=404, latency_ms=31, error="HTTP 404", response_excerpt="no such hook"
    )
    del degraded
    stream.refresh_from_db()
    return stream


def bulk_streams(account: Account, count: int, *, calls: int = 100, start: datetime | None = None) -> None:
    """Many ended streams cheaply: bulk_create, no events, spread one a minute back from `start`."""
    start = start or timezone.now()
    call_rows = Call.objects.bulk_create(
        [
            Call(account=account, status=Call.Status.ENDED, started_at=start, ended_at=start, to_number=f"+1{i:010d}")
            for i in range(calls)
        ]
    )
    batch: list[Stream] = []
    for i in range(count):
        created = start - timedelta(minutes=i)
        batch.append(
            Stream(
                call=call_rows[i % calls],
                account=account,
                service_url=f"wss://bulk{i % 7}.example.com/ws/{i}",
                status=Stream.Status.STOPPED,
                created_at=created,
                start_time=created,
                end_time=created + timedelta(seconds=27),
                duration=27,
                bill_duration=27,
                rounded_bill_duration=60,
                billed_amount=Decimal("0.00300"),
                hangup_reason=Stream.Reason.CALL_HANGUP if i % 3 else Stream.Reason.API_REQUEST,
            )
        )
        if len(batch) == 5000:
            Stream.objects.bulk_create(batch)
            batch = []
    if batch:
        Stream.objects.bulk_create(batch)
