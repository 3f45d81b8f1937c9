"""The isolation of pytest-xdist workers (tests/parallel.py)."""

from __future__ import annotations

import pytest

from tests.parallel import isolate


def test_a_worker_gets_its_own_data_directory_and_redis_database() -> None:
    env = {"PYTEST_XDIST_WORKER": "gw1", "STREAMHUB_DATA_DIR": "/x/var/test", "REDIS_URL": "redis://127.0.0.1:6379/3"}
    isolate(env)
    assert env["STREAMHUB_DATA_DIR"] == "/x/var/test/gw1" and env["REDIS_URL"] == "redis://127.0.0.1:6379/4"
    bare = {"PYTEST_XDIST_WORKER": "gw2", "REDIS_URL": "redis://h:1"}
    isolate(bare)
    assert bare == {"PYTEST_XDIST_WORKER": "gw2", "REDIS_URL": "redis://h:1/2"}  # no data dir given: left alone


def test_outside_a_worker_nothing_changes_and_too_many_workers_is_an_error() -> None:
    env = {"STREAMHUB_DATA_DIR": "/x", "REDIS_URL": "redis://h:1/0"}
    isolate(env)
    assert env == {"STREAMHUB_DATA_DIR": "/x", "REDIS_URL": "redis://h:1/0"}
    with pytest.raises(RuntimeError, match="no Redis database"):
        isolate({"PYTEST_XDIST_WORKER": "gw9", "REDIS_URL": "redis://h:1/9"})
