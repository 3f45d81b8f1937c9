"""streamhub settings: environment-driven, with embedded defaults that need no server.

A fresh checkout runs with no environment at all (SQLite, in-memory channel layer,
kombu's filesystem broker, all under STREAMHUB_DATA_DIR). Production changes env vars:
DATABASE_URL (PostgreSQL) and REDIS_URL (channels-redis + Celery broker).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from streamhub.envconf import (
    channel_layer,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_networks,
    env_rate,
    local_secret_key,
)
from streamhub.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.getenv("STREAMHUB_DATA_DIR") or BASE_DIR / "var").resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DJANGO_DEBUG", default=False)
SECRET_KEY = os.getenv("DJANGO_SECRET_KEY") or local_secret_key(DATA_DIR)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", default="localhost,127.0.0.1")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = SECURE_SSL_REDIRECT
CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", default="")
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("DJANGO_BEHIND_TLS_PROXY", default=False) else None
)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "streams",
    "callbacks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "streamhub.middleware.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "streamhub.urls"
ASGI_APPLICATION = "streamhub.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_default_db = f"sqlite:///{DATA_DIR / 'db.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(
        os.getenv("DATABASE_URL") or _default_db,
        # Persistent connections: a call's lifecycle writes would otherwise each pay a new
        # PostgreSQL connection (several ms), which serialises call set-up under load.
        conn_max_age=env_int("STREAMHUB_DB_CONN_MAX_AGE", default=60, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Async consumer tests need a file, not :memory:; WAL + a busy timeout let the
    # hub, the worker and beat share the file without "database is locked".
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-db.sqlite3")}
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.getenv("REDIS_URL") or None
CHANNEL_LAYERS = {
    "default": channel_layer(
        REDIS_URL, max_connections=env_int("STREAMHUB_REDIS_MAX_CONNECTIONS", default=2000, minimum=10)
    )
}

# The failed-authentication counters (streams/throttle.py): shared by every hub process through
# Redis when there is one, in each process's memory otherwise.
CACHES = {
    "default": {
        "BACKEND": "streamhub.cache.SharedRedisCache",  # one Redis client per process, not per request
        "LOCATION": REDIS_URL,
        # short: an unreachable Redis must not hold a sign-in (the throttle then lets it through)
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
    if REDIS_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"

# Text by default; STREAMHUB_LOG_FORMAT=json: one JSON object per line with the call/stream/account ids
# (streamhub/logs.py). Both formats redact credentials. The Celery worker and beat use the same config.
STREAMHUB_LOG_FORMAT = env_choice("STREAMHUB_LOG_FORMAT", default="text", choices=("text", "json"))
LOGGING = logging_config(fmt=STREAMHUB_LOG_FORMAT, level=os.getenv("STREAMHUB_LOG_LEVEL", "INFO"))
if STREAMHUB_LOG_FORMAT == "json":
    logging.captureWarnings(True)  # Python warnings become log records (JSON lines) too

# --- Django REST framework -------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["streams.api.auth.AccountBasicAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["streams.api.auth.IsAccount"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "streams.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
    # Whose address counts for throttling: the peer's, or what the trusted proxies put in X-Forwarded-For.
    "NUM_PROXIES": env_int("STREAMHUB_TRUSTED_PROXIES", default=0, minimum=0),
}
SPECTACULAR_SETTINGS = {
    "TITLE": "streamhub API",
    "DESCRIPTION": "Plivo-compatible Audio Streams REST API (calls, streams and applications).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI and ReDoc from the installed package, not a CDN: the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "StreamStatusEnum": "streams.models.Stream.Status",
        "CallStatusEnum": "streams.models.Call.Status",
    },
}

# --- Celery ------------------------------------------------------------------------
BROKER_DIR = DATA_DIR / "broker"
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"visibility_timeout": 600}
else:
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://localhost/"  # a hostname, or kombu warns on every publish
    # kombu's filesystem transport with atomic writes and claims (streamhub.broker): crash-safe
    CELERY_BROKER_TRANSPORT = "streamhub.broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        # kombu polls the folder once a second by default: 1-2 s per broker hop
        "polling_interval": env_float("STREAMHUB_BROKER_POLL_SECONDS", default=0.1, minimum=0.01),
    }
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A plain `celery -A streamhub worker` runs 8 threads: deliveries wait on HTTP, not the CPU, and one
# account's slow endpoint holds at most STREAMHUB_CALLBACK_ACCOUNT_CONCURRENCY of them (docs/callbacks.md).
# `--concurrency N` on the command line overrides the count; `--pool` overrides the pool, except
# `--pool=prefork`, which Celery 5.7 cannot tell from its own default and replaces with this one.
CELERY_WORKER_POOL = "threads"
CELERY_WORKER_CONCURRENCY = 8
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_SWEEP_SECONDS = env_float("STREAMHUB_SWEEP_SECONDS", default=30.0, minimum=0.5)
CELERY_BEAT_SCHEDULE = {
    "callbacks-sweep": {"task": "callbacks.tasks.sweep", "schedule": CELERY_SWEEP_SECONDS},
    "streams-orphans": {"task": "streams.tasks.sweep_orphans", "schedule": CELERY_SWEEP_SECONDS},
    "streams-prune": {
        "task": "streams.tasks.prune",
        "schedule": env_float("STREAMHUB_PRUNE_EVERY_SECONDS", default=3600.0, minimum=1.0),
    },
}

# --- streamhub ---------------------------------------------------------------------
# Which server process holds a call: hostname:pid unless set, plus a boot nonce, so a process that
# restarts with the same hostname and PID (a container) never revives a dead process's lease. `{pid}` in
# the value is replaced by the process id, for logs that tell the workers of one `uvicorn --workers N` apart.
STREAMHUB_SERVER_ID = (os.getenv("STREAMHUB_SERVER_ID") or f"{socket.gethostname()}:{{pid}}").replace(
    "{pid}", str(os.getpid())
) + f"#{secrets.token_hex(4)}"
STREAMHUB_STREAM_BUFFER_SECONDS = env_float("STREAMHUB_STREAM_BUFFER_SECONDS", default=40.0, minimum=0.1)
# A threshold of the send buffer (30/60/90 %) sends DegradedStream at most once per this many seconds.
STREAMHUB_DEGRADED_MIN_INTERVAL_SECONDS = env_float(
    "STREAMHUB_DEGRADED_MIN_INTERVAL_SECONDS", default=30.0, minimum=0.0
)
STREAMHUB_PLAYBACK_QUEUE_SECONDS = env_float("STREAMHUB_PLAYBACK_QUEUE_SECONDS", default=60.0, minimum=1.0)
STREAMHUB_CONNECT_TIMEOUT = env_float("STREAMHUB_CONNECT_TIMEOUT", default=5.0, minimum=0.1)
STREAMHUB_CONNECT_RETRY_DELAY = env_float("STREAMHUB_CONNECT_RETRY_DELAY", default=0.5, minimum=0.0)
# Streams with reconnect (docs/resume.md) ping this often and count a connection without a pong
# for three of these as dropped, so a silent network failure is resumed rather than left to the buffer.
STREAMHUB_RESUME_KEEPALIVE_SECONDS = env_float("STREAMHUB_RESUME_KEEPALIVE_SECONDS", default=5.0, minimum=0.1)
STREAMHUB_CUSTOMER_CA_BUNDLE = os.getenv("STREAMHUB_CUSTOMER_CA_BUNDLE") or None
STREAMHUB_SEND_STOP_FRAME = env_bool("STREAMHUB_SEND_STOP_FRAME", default=False)
STREAMHUB_BILLING_INTERVAL = env_int("STREAMHUB_BILLING_INTERVAL", default=60, minimum=1)
STREAMHUB_HEARTBEAT_SECONDS = env_float("STREAMHUB_HEARTBEAT_SECONDS", default=10.0, minimum=0.1)
STREAMHUB_ORPHAN_AFTER_SECONDS = env_float("STREAMHUB_ORPHAN_AFTER_SECONDS", default=60.0, minimum=0.5)
# PostgreSQL lock_timeout / statement_timeout inside lifecycle and outbox transactions (streamhub.dbguard)
STREAMHUB_DB_LOCK_TIMEOUT_SECONDS = env_float("STREAMHUB_DB_LOCK_TIMEOUT_SECONDS", default=5.0, minimum=0.01)
STREAMHUB_DB_STATEMENT_TIMEOUT_SECONDS = env_float("STREAMHUB_DB_STATEMENT_TIMEOUT_SECONDS", default=15.0, minimum=0.01)
# Measured capacity of one uvicorn process on one core of the 2-vCPU development VM: 400 calls with p99 < 20 ms
# (daphne: 200); bench/RESULTS.md. Measure yours with bench/run.py and set this below what it prints.
STREAMHUB_MAX_CALLS = env_int("STREAMHUB_MAX_CALLS", default=350, minimum=1)
# Active streams one call may have at once (REST, admin and gateway metadata alike); Plivo allows a handful.
STREAMHUB_MAX_STREAMS_PER_CALL = env_int("STREAMHUB_MAX_STREAMS_PER_CALL", default=5, minimum=1)
# Where the hub may connect (docs/callbacks.md, "Where the hub connects"). Off by default: a self-hosted
# hub usually calls bots and receivers on its own private network. Turn them on when accounts are not
# trusted; names are resolved and checked when connecting, and the allow-list opens known networks.
# What a bidirectional stream weighs against STREAMHUB_MAX_CALLS (a one-way stream weighs 1): it relays
# media out and plays audio back, two frames per 20 ms, and the playback frames cost more than media
# ones (a paced task per call): measured 2.6-2.9 (bench/RESULTS.md, round 2). streams/live/admission.py.
STREAMHUB_BIDI_STREAM_WEIGHT = env_float("STREAMHUB_BIDI_STREAM_WEIGHT", default=2.7, minimum=1.0)
STREAMHUB_FORBID_PRIVATE_CALLBACKS = env_bool("STREAMHUB_FORBID_PRIVATE_CALLBACKS", default=False)
STREAMHUB_FORBID_PRIVATE_SERVICE_URLS = env_bool("STREAMHUB_FORBID_PRIVATE_SERVICE_URLS", default=False)
STREAMHUB_ALLOWED_PRIVATE_NETWORKS = env_networks("STREAMHUB_ALLOWED_PRIVATE_NETWORKS")

# Failed authentication (REST API, gateway upgrades, admin login) per client address: beyond this many
# in a window, that address gets 429 (403 on a daphne upgrade) until the window ends.
STREAMHUB_AUTH_FAILURE_RATE = env_rate("STREAMHUB_AUTH_FAILURE_RATE", default="10/min")
# Proxies in front of the hub that append the client to X-Forwarded-For (0: use the peer address).
STREAMHUB_TRUSTED_PROXIES = env_int("STREAMHUB_TRUSTED_PROXIES", default=0, minimum=0)

# Applications: the answer URL's tries (decisions A4, A5)
STREAMHUB_ANSWER_TIMEOUT_SECONDS = env_float("STREAMHUB_ANSWER_TIMEOUT_SECONDS", default=5.0, minimum=0.1)
STREAMHUB_ANSWER_TRIES = env_int("STREAMHUB_ANSWER_TRIES", default=3, minimum=1)
STREAMHUB_ANSWER_RETRY_DELAY_SECONDS = env_float("STREAMHUB_ANSWER_RETRY_DELAY_SECONDS", default=0.5, minimum=0.0)

# Callbacks (decision D16)
STREAMHUB_CALLBACK_MAX_ATTEMPTS = env_int("STREAMHUB_CALLBACK_MAX_ATTEMPTS", default=8, minimum=1)
STREAMHUB_CALLBACK_BACKOFF_SECONDS = env_float("STREAMHUB_CALLBACK_BACKOFF_SECONDS", default=2.0, minimum=0.0)
STREAMHUB_CALLBACK_BACKOFF_MAX_SECONDS = env_float("STREAMHUB_CALLBACK_BACKOFF_MAX_SECONDS", default=300.0, minimum=0.0)
STREAMHUB_CALLBACK_MAX_AGE_SECONDS = env_float("STREAMHUB_CALLBACK_MAX_AGE_SECONDS", default=3600.0, minimum=1.0)
# One try's whole deadline: resolve, connect, send, and read the answer.
STREAMHUB_CALLBACK_TIMEOUT_SECONDS = env_float("STREAMHUB_CALLBACK_TIMEOUT_SECONDS", default=10.0, minimum=0.1)
STREAMHUB_CALLBACK_ACCOUNT_CONCURRENCY = env_int("STREAMHUB_CALLBACK_ACCOUNT_CONCURRENCY", default=4, minimum=1)
STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS = env_float(
    "STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS", default=120.0, minimum=0.5
)

# Operations (docs/operations.md)
# /metrics of each hub process, and the worker's exporter, want `Authorization: Bearer <token>` when set.
STREAMHUB_METRICS_TOKEN = os.getenv("STREAMHUB_METRICS_TOKEN") or None
# The Celery worker serves its metrics on this port (0: no exporter); one port per worker process.
STREAMHUB_WORKER_METRICS_PORT = env_int("STREAMHUB_WORKER_METRICS_PORT", default=0, minimum=0)
STREAMHUB_WORKER_METRICS_ADDR = os.getenv("STREAMHUB_WORKER_METRICS_ADDR") or "127.0.0.1"
# /readyz says 503 once the event loop runs callbacks this late (seconds): the process is overloaded.
STREAMHUB_READY_MAX_LOOP_LAG_SECONDS = env_float("STREAMHUB_READY_MAX_LOOP_LAG_SECONDS", default=0.5, minimum=0.0)
# The loop-lag guard: new calls are refused while the event loop's sustained lag is over this
# (seconds), until it falls under half of it; /readyz says 503 meanwhile. 0 turns it off.
STREAMHUB_ADMIT_MAX_LOOP_LAG_SECONDS = env_float("STREAMHUB_ADMIT_MAX_LOOP_LAG_SECONDS", default=0.05, minimum=0.0)
# Each hub process publishes its live calls' state for the console's live page this often.
STREAMHUB_LIVE_SNAPSHOT_SECONDS = env_float("STREAMHUB_LIVE_SNAPSHOT_SECONDS", default=2.0, minimum=0.2)

# Retention, in days (0 keeps forever): the beat's prune task and `manage.py prune` delete older rows in
# small batches, never anything of a call that is still live.
STREAMHUB_RETAIN_DEBUG_EVENTS_DAYS = env_float("STREAMHUB_RETAIN_DEBUG_EVENTS_DAYS", default=30.0, minimum=0.0)
STREAMHUB_RETAIN_CALLBACKS_DAYS = env_float("STREAMHUB_RETAIN_CALLBACKS_DAYS", default=30.0, minimum=0.0)
STREAMHUB_RETAIN_RECORDS_DAYS = env_float("STREAMHUB_RETAIN_RECORDS_DAYS", default=400.0, minimum=0.0)
STREAMHUB_RETAIN_DEAD_PROCESSES_DAYS = env_float("STREAMHUB_RETAIN_DEAD_PROCESSES_DAYS", default=7.0, minimum=0.0)
STREAMHUB_PRUNE_BATCH = env_int("STREAMHUB_PRUNE_BATCH", default=5000, minimum=1)
if STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS < 2 * STREAMHUB_CALLBACK_TIMEOUT_SECONDS:
    # A try still running when the sweep takes its delivery back would be sent twice.
    raise ImproperlyConfigured(
        f"STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS={STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS:g} must be at least "
        f"twice STREAMHUB_CALLBACK_TIMEOUT_SECONDS={STREAMHUB_CALLBACK_TIMEOUT_SECONDS:g} (a try's whole deadline), "
        "so that the sweep never takes back a delivery whose try is still running"
    )
