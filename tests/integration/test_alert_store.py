"""The alert store against the real MongoDB-compatible server: the dedup key, attempt
claims under concurrency (claims are unique inserts), taking over a dead instance's claim,
the activity log's filters
and pages, and runtime watches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from flowyard.adapters.alert_store import AlertStore
from flowyard.config import Settings
from flowyard.domain.alerts import (
    ActivityFilter,
    Alert,
    AlertKind,
    AttemptRecord,
    Channel,
    DeliveryStatus,
    Recipient,
    RuntimeWatch,
    alert_id,
)

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[AlertStore]:
    async with AlertStore.connect(settings.mongo_url, settings.mongo_db) as opened:
        yield opened


def alert(run_id: str = "run-1", address: str = "ops@example.com") -> Alert:
    recipient = Recipient(Channel.EMAIL, address)
    return Alert(
        alert_id=alert_id(run_id, AlertKind.FAILED, recipient),
        run_id=run_id,
        kind=AlertKind.FAILED,
        recipient=recipient,
        subject="s",
        body="b",
        slack_text="t",
        workflow_name="nightly",
        workflow_type="billing",
        event_at=NOW,
        created_at=NOW,
        due_at=NOW + timedelta(minutes=2),
    )


async def test_an_alert_is_stored_once_per_key(store: AlertStore) -> None:
    assert await store.insert_alert(alert())
    assert not await store.insert_alert(alert())
    assert await store.insert_alert(alert(address="other@example.com"))


async def test_concurrent_claims_of_one_attempt_have_one_winner(store: AlertStore) -> None:
    lease = NOW + timedelta(seconds=30)
    for n in range(20):
        queued = alert(run_id=f"run-{n}")
        await store.insert_alert(queued)
        claims = await asyncio.gather(
            *(store.claim_alert(queued.alert_id, 0, lease, NOW) for _ in range(6))
        )
        winners = [c for c in claims if c is not None]
        assert len(winners) == 1, n
        assert winners[0].attempts == 1


async def test_a_claim_whose_lease_passed_is_taken_over_with_the_next_attempt(
    store: AlertStore,
) -> None:
    queued = alert()
    await store.insert_alert(queued)
    first = await store.claim_alert(queued.alert_id, 0, NOW + timedelta(seconds=30), NOW)
    assert first is not None and first.attempts == 1
    # While the lease runs, the attempt is nobody else's.
    assert await store.claim_alert(queued.alert_id, 1, NOW + timedelta(minutes=1), NOW) is None
    # The claimer died: after its lease, a hand-over takes the next attempt.
    later = NOW + timedelta(seconds=31)
    second = await store.claim_alert(queued.alert_id, 1, later + timedelta(seconds=30), later)
    assert second is not None and second.attempts == 2
    # An older hand-over (it saw 0 attempts) claims nothing.
    assert await store.claim_alert(queued.alert_id, 0, later, later) is None
    # Attempt 2 failed; its outcome recorded, attempt 3 need not wait for 2's lease.
    await store.retry_alert(queued.alert_id, 2, later, "451 try later")
    await store.end_claim(queued.alert_id, 2)
    third = await store.claim_alert(queued.alert_id, 2, later + timedelta(seconds=30), later)
    assert third is not None and third.attempts == 3
    # Once sent, no hand-over claims it again.
    assert await store.finish_alert(queued.alert_id, 3, DeliveryStatus.SENT, later)
    much_later = later + timedelta(hours=1)
    assert await store.claim_alert(queued.alert_id, 3, much_later, much_later) is None


async def test_retries_and_lost_hand_overs_come_due(store: AlertStore) -> None:
    queued = alert()
    await store.insert_alert(queued)
    assert await store.due_alerts(NOW) == []
    [due] = await store.due_alerts(NOW + timedelta(minutes=3))
    assert due.alert_id == queued.alert_id
    # One poller moves it (and hands it over); another that read it too does not.
    assert await store.move_due(due, NOW + timedelta(minutes=10))
    assert not await store.move_due(due, NOW + timedelta(minutes=10))


def record(n: int, **fields: object) -> AttemptRecord:
    values: dict[str, object] = {
        "attempt_id": f"a{n:03d}",
        "alert_id": f"alert-{n}",
        "kind": AlertKind.FAILED,
        "run_id": f"run-{n % 3}",
        "workflow_name": "nightly",
        "workflow_type": "billing",
        "channel": Channel.EMAIL if n % 2 else Channel.SLACK,
        "recipient": "ops@example.com" if n % 2 else "#ops",
        "at": NOW + timedelta(seconds=n // 2),  # pairs share a time: the id breaks ties
        "status": DeliveryStatus.SENT if n % 5 else DeliveryStatus.FAILED,
        "attempt": 1,
    }
    values.update(fields)
    return AttemptRecord(**values)  # type: ignore[arg-type]


async def test_the_activity_log_filters_and_pages_newest_first(store: AlertStore) -> None:
    for n in range(25):
        await store.record_attempt(record(n))
    seen: list[str] = []
    token = ""
    while True:
        page, token = await store.list_activity(ActivityFilter(), limit=10, page_token=token)
        seen.extend(r.attempt_id for r in page)
        if not token:
            break
    assert seen == [f"a{n:03d}" for n in reversed(range(25))]
    failed = await store.list_activity(ActivityFilter(status=DeliveryStatus.FAILED))
    assert {r.attempt_id for r in failed[0]} == {"a000", "a005", "a010", "a015", "a020"}
    slack_run_1 = await store.list_activity(ActivityFilter(run_id="run-1", channel=Channel.SLACK))
    assert {r.attempt_id for r in slack_run_1[0]} == {"a004", "a010", "a016", "a022"}
    with pytest.raises(ValueError, match="page_token"):
        await store.list_activity(ActivityFilter(), page_token="not-a-token")


async def test_a_runtime_watch_keeps_its_first_due_time(store: AlertStore) -> None:
    watch = RuntimeWatch("run-1", "ops", "nightly", "billing", NOW, 60, NOW + timedelta(minutes=1))
    await store.watch_runtime(watch)
    await store.watch_runtime(RuntimeWatch("run-1", "ops", "nightly", "billing", NOW, 60, NOW))
    assert await store.due_watches(NOW) == []
    [due] = await store.due_watches(NOW + timedelta(minutes=2))
    assert due.due_at == watch.due_at
    await store.end_watches("run-1")
    assert await store.due_watches(NOW + timedelta(days=1)) == []
