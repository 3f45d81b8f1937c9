"""One Redis client per hub process for the failed-authentication counters (streamhub/cache.py).

Every gateway upgrade reads the counters (streams/throttle.py) and each connection is an async
context of its own, for which Django's stock Redis backend would build a client and dial Redis
anew. The hub is served in this process (tests/live/inprocess.py) and Redis is asked how many
connections it accepted meanwhile.
"""

from __future__ import annotations

import pytest
import redis
from django.conf import settings
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from streams.models import Account
from tests.live.inprocess import hub_in_process
from tests.support import basic_auth

pytestmark = [
    pytest.mark.skipif(not settings.REDIS_URL, reason="the counters live in Redis only with REDIS_URL"),
    pytest.mark.django_db(transaction=True),
]

UPGRADES = 20


def accepted_connections() -> int:
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return int(client.info("stats")["total_connections_received"])
    finally:
        client.close()


async def test_gateway_upgrades_share_the_processs_redis_connections(account: Account) -> None:
    wrong = basic_auth(account.auth_id, "x" * len(account.auth_token))  # read and count: two commands each
    async with hub_in_process() as base:
        before = accepted_connections()
        for _ in range(UPGRADES):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"{base}/audio-fork", additional_headers=wrong):
                    pass
            assert refused.value.response.status_code == 403
        dialled = accepted_connections() - before - 1  # less this test's own question
    assert dialled <= 2, f"{dialled} Redis connections for {UPGRADES} upgrades"
