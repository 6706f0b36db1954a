"""The document store under the engine's assumptions: a conditional write on a run's
revision lets exactly one of two racing writers through; an unreachable store is waited
for, naming its address; a refused login stops at once, naming user and address but never
the password."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import replace
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from flowyard.adapters.mongo import MongoStore
from flowyard.adapters.store_connection import StoreLoginError
from flowyard.config import Settings
from flowyard.domain.run import RunStatus
from flowyard.errors import ConflictError, InfrastructureError

from tests.history_seed import Seed, make_run

pytestmark = pytest.mark.integration


async def test_two_writers_on_one_revision_exactly_one_wins(settings: Settings) -> None:
    """Two scheduler instances (two clients) advance the same run from the same revision,
    50 rounds: each round exactly one write lands and the stored run is the winner's."""
    async with (
        MongoStore(settings.mongo_url, settings.mongo_db) as first,
        MongoStore(settings.mongo_url, settings.mongo_db) as second,
    ):
        run = make_run(Seed("race", datetime.now(UTC), RunStatus.RUNNING, duration=None))
        assert await first.insert_run(run)
        for round_ in range(50):
            current = await first.get_run(run.run_id)
            mine = replace(current, status=RunStatus.STOPPED, stopped_by=f"first-{round_}")
            theirs = replace(current, status=RunStatus.FAILED, stopped_by=f"second-{round_}")
            results = await asyncio.gather(
                first.save_run(mine, current.revision),
                second.save_run(theirs, current.revision),
                return_exceptions=True,
            )
            won = [r for r in results if not isinstance(r, BaseException)]
            lost = [r for r in results if isinstance(r, ConflictError)]
            assert len(won) == 1 and len(lost) == 1, results
            stored = await second.get_run(run.run_id)
            assert stored.revision == current.revision + 1
            assert stored.stopped_by == won[0].stopped_by


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user = parts.username or "nobody"
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user)}:{quote(password)}@{host}:{parts.port or 27017}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def test_a_wrong_password_names_user_and_address_never_the_password(
    settings: Settings,
) -> None:
    if not urlsplit(settings.mongo_url).username:
        pytest.skip("this store takes no login")
    wrong = "not-the-password-Zq81"
    url = _with_password(settings.mongo_url, wrong)
    parts = urlsplit(url)
    with pytest.raises(StoreLoginError) as raised:
        async with MongoStore(url, settings.mongo_db, wait_seconds=30):
            pass
    message = str(raised.value)
    assert f"user '{parts.username}'" in message
    assert f"{parts.hostname}:{parts.port}" in message
    assert wrong not in message and "FLOWYARD_MONGO_URL" in message


async def test_an_unreachable_store_is_waited_for_naming_its_address(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as held:  # bound, never listening: connections are refused
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        url = f"mongodb://flowyard:secret-pw@127.0.0.1:{port}/?serverSelectionTimeoutMS=500"
        caplog.set_level(logging.WARNING, logger="flowyard.adapters.store_connection")
        with pytest.raises(InfrastructureError) as raised:
            async with MongoStore(url, settings.mongo_db, wait_seconds=2):
                pass
    waiting = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert waiting and f"127.0.0.1:{port}" in waiting[0]
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "secret-pw" not in str(raised.value) + " ".join(waiting)
