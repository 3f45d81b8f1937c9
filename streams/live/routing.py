from __future__ import annotations

from django.urls import path

from streams.live.asterisk import AsteriskConsumer
from streams.live.audiofork import AudioForkConsumer

websocket_urlpatterns = [
    path("ingest/audio-fork", AudioForkConsumer.as_asgi()),
    path("ingest/asterisk", AsteriskConsumer.as_asgi()),
]
