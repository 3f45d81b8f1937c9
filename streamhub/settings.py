"""streamhub settings: environment-driven, with embedded defaults that need no server.

A fresh checkout runs with no environment at all (SQLite, in-memory channel layer,
kombu's filesystem broker, all under STREAMHUB_DATA_DIR). Production changes env vars:
DATABASE_URL (PostgreSQL) and REDIS_URL (channels-redis + Celery broker).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dj_database_url

from streamhub.envconf import channel_layer, env_bool, env_float, env_int, env_list, local_secret_key

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

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.getenv("STREAMHUB_LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}, "daphne": {"level": "WARNING"}},
}

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
}
SPECTACULAR_SETTINGS = {
    "TITLE": "streamhub API",
    "DESCRIPTION": "Plivo-compatible Audio Streams REST API (calls and streams).",
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
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_SWEEP_SECONDS = env_float("STREAMHUB_SWEEP_SECONDS", default=30.0, minimum=0.5)
CELERY_BEAT_SCHEDULE = {
    "callbacks-sweep": {"task": "callbacks.tasks.sweep", "schedule": CELERY_SWEEP_SECONDS},
    "streams-orphans": {"task": "streams.tasks.sweep_orphans", "schedule": CELERY_SWEEP_SECONDS},
}

# --- streamhub ---------------------------------------------------------------------
# Which server process holds a call: hostname:pid unless set (one per daphne process).
# One id per process (the heartbeat and the orphan sweep go by it): `{pid}` in the value is replaced by the
# process id, so the workers of one `uvicorn --workers N` command, which share their environment, differ.
STREAMHUB_SERVER_ID = (os.getenv("STREAMHUB_SERVER_ID") or f"{socket.gethostname()}:{{pid}}").replace(
    "{pid}", str(os.getpid())
)
STREAMHUB_PUBLIC_URL = os.getenv("STREAMHUB_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
STREAMHUB_STREAM_BUFFER_SECONDS = env_float("STREAMHUB_STREAM_BUFFER_SECONDS", default=40.0, minimum=0.1)
STREAMHUB_PLAYBACK_QUEUE_SECONDS = env_float("STREAMHUB_PLAYBACK_QUEUE_SECONDS", default=60.0, minimum=1.0)
STREAMHUB_CONNECT_TIMEOUT = env_float("STREAMHUB_CONNECT_TIMEOUT", default=5.0, minimum=0.1)
STREAMHUB_CONNECT_RETRY_DELAY = env_float("STREAMHUB_CONNECT_RETRY_DELAY", default=0.5, minimum=0.0)
STREAMHUB_CUSTOMER_CA_BUNDLE = os.getenv("STREAMHUB_CUSTOMER_CA_BUNDLE") or None
STREAMHUB_SEND_STOP_FRAME = env_bool("STREAMHUB_SEND_STOP_FRAME", default=False)
STREAMHUB_BILLING_INTERVAL = env_int("STREAMHUB_BILLING_INTERVAL", default=60, minimum=1)
STREAMHUB_HEARTBEAT_SECONDS = env_float("STREAMHUB_HEARTBEAT_SECONDS", default=10.0, minimum=0.1)
STREAMHUB_ORPHAN_AFTER_SECONDS = env_float("STREAMHUB_ORPHAN_AFTER_SECONDS", default=60.0, minimum=0.5)
# Measured capacity of one uvicorn process on one core of the 2-vCPU development VM: 400 calls with p99 < 20 ms
# (daphne: 200); bench/RESULTS.md. Measure yours with bench/run.py and set this below what it prints.
STREAMHUB_MAX_CALLS = env_int("STREAMHUB_MAX_CALLS", default=350, minimum=1)
# What a bidirectional stream weighs against STREAMHUB_MAX_CALLS (a one-way stream weighs 1): it relays
# media out and plays audio back, two frames per 20 ms, and the playback frames cost more than media
# ones (a paced task per call): measured 2.6-2.9 (bench/RESULTS.md, round 2). streams/live/admission.py.
STREAMHUB_BIDI_STREAM_WEIGHT = env_float("STREAMHUB_BIDI_STREAM_WEIGHT", default=2.7, minimum=1.0)
STREAMHUB_FORBID_PRIVATE_CALLBACKS = env_bool("STREAMHUB_FORBID_PRIVATE_CALLBACKS", default=False)

# Callbacks (decision D16)
STREAMHUB_CALLBACK_MAX_ATTEMPTS = env_int("STREAMHUB_CALLBACK_MAX_ATTEMPTS", default=8, minimum=1)
STREAMHUB_CALLBACK_BACKOFF_SECONDS = env_float("STREAMHUB_CALLBACK_BACKOFF_SECONDS", default=2.0, minimum=0.0)
STREAMHUB_CALLBACK_BACKOFF_MAX_SECONDS = env_float("STREAMHUB_CALLBACK_BACKOFF_MAX_SECONDS", default=300.0, minimum=0.0)
STREAMHUB_CALLBACK_MAX_AGE_SECONDS = env_float("STREAMHUB_CALLBACK_MAX_AGE_SECONDS", default=3600.0, minimum=1.0)
STREAMHUB_CALLBACK_TIMEOUT_SECONDS = env_float("STREAMHUB_CALLBACK_TIMEOUT_SECONDS", default=10.0, minimum=0.1)
STREAMHUB_CALLBACK_ACCOUNT_CONCURRENCY = env_int("STREAMHUB_CALLBACK_ACCOUNT_CONCURRENCY", default=4, minimum=1)
STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS = env_float(
    "STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS", default=120.0, minimum=0.5
)
