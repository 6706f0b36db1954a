"""Trigger config validation, cron math and event matching (flowyard.domain.triggers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flowyard.domain.definition import parse_definition
from flowyard.domain.triggers import (
    EventTrigger,
    MissedTicks,
    Schedule,
    TriggerSpec,
    derived_run_id,
    due_ticks,
    event_matches,
    idempotent_run_id,
    next_fire_time,
    parse_trigger,
    tick_label,
)
from flowyard.errors import DefinitionError


def definition(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "orders",
        "nodes": [
            {"id": "start", "type": "trigger", "config": config},
            {"id": "work", "type": "code", "config": {"source": "result = 1"}},
        ],
        "edges": [{"from": "start", "to": "work"}],
    }


def problems(config: dict[str, Any]) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(definition(config))
    return [str(p) for p in caught.value.problems]


def test_every_trigger_kind_combined_is_valid() -> None:
    parsed = parse_definition(
        definition(
            {
                "manual": False,
                "schedule": {
                    "cron": "*/5 * * * *",
                    "timezone": "Europe/Berlin",
                    "missed": "run_once",
                },
                "webhook": True,
                "event": {"type": "order.created", "filter": "data.amount > 100"},
                "after": {"workflow": "upstream"},
            }
        )
    )
    spec = parse_trigger(parsed.trigger.config)
    assert spec == TriggerSpec(
        manual=False,
        schedule=Schedule("*/5 * * * *", "Europe/Berlin", MissedTicks.RUN_ONCE),
        webhook=True,
        event=EventTrigger("order.created", "data.amount > 100"),
        after="upstream",
    )
    assert spec.describe() == [
        "schedule '*/5 * * * *' Europe/Berlin (missed: run_once)",
        "webhook",
        "event order.created if data.amount > 100",
        "after upstream",
    ]


def test_a_trigger_without_config_is_manual_only() -> None:
    spec = parse_trigger(parse_definition(definition({})).trigger.config)
    assert spec == TriggerSpec()
    assert spec.describe() == ["manual"]


def test_six_fields_put_seconds_first() -> None:
    parse_definition(definition({"schedule": {"cron": "*/2 * * * * *"}}))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"schedule": {"cron": "61 * * * *"}},
            "node 'start': config.schedule.cron '61 * * * *': bad minute",
        ),
        (
            {"schedule": {"cron": "* * *"}},
            "node 'start': config.schedule.cron '* * *': needs 5 fields (minute hour day month "
            "weekday) or 6 with leading seconds",
        ),
        (
            {"schedule": {"cron": "0 0 31 2 *"}},
            "node 'start': config.schedule.cron '0 0 31 2 *': bad day-of-month",
        ),
        (
            {"schedule": {"cron": "0 * * * *", "timezone": "Mars/Olympus"}},
            "node 'start': config.schedule.timezone 'Mars/Olympus': unknown time zone (e.g. UTC)",
        ),
        (
            {"schedule": {"cron": "0 * * * *", "missed": "all"}},
            "node 'start': config.schedule.missed 'all': must be 'skip' or 'run_once'",
        ),
        (
            {"schedule": "0 * * * *"},
            "node 'start': config.schedule must be a mapping, e.g. "
            '{cron: "0 * * * *", timezone: UTC}',
        ),
        (
            {"event": {"type": "order.created", "filter": "data.amount >"}},
            "node 'start': config.event.filter: syntax error at the end: invalid syntax",
        ),
        (
            {"event": {"filter": "True"}},
            "node 'start': config.event.type is required (the event type to match)",
        ),
        ({"after": {}}, "node 'start': config.after needs a workflow name: {workflow: NAME}"),
        ({"webhook": "yes"}, "node 'start': config.webhook must be true or false"),
        (
            {"cron": "* * * * *"},
            "node 'start': config.cron: unknown trigger field "
            "(allowed: manual, schedule, webhook, event, after)",
        ),
    ],
)
def test_bad_trigger_config_is_rejected_naming_node_and_field(
    config: dict[str, Any], expected: str
) -> None:
    assert problems(config) == [expected]


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        {
            "schedule": {"cron": "bad", "timezone": "Nowhere/City"},
            "event": {"type": "x", "filter": "import os"},
        }
    )
    assert len(found) == 3
    assert all(p.startswith("node 'start': config.") for p in found)


UTC_HOURLY = Schedule("0 * * * *")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_next_fire_time_respects_the_time_zone() -> None:
    berlin = Schedule("0 9 * * *", "Europe/Berlin")
    assert next_fire_time(berlin, at("2026-01-10T12:00:00+00:00")) == at(
        "2026-01-11T08:00:00+00:00"
    )
    # Summer time: 09:00 in Berlin is 07:00 UTC.
    assert next_fire_time(berlin, at("2026-07-10T12:00:00+00:00")) == at(
        "2026-07-11T07:00:00+00:00"
    )
    assert tick_label(berlin, at("2026-07-11T07:00:00+00:00")) == "2026-07-11T09:00:00+02:00"


def test_a_tick_missing_on_the_dst_change_day_fires_once_like_debian_cron() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29; Debian cron runs it at 03:00.
    berlin = Schedule("30 2 * * *", "Europe/Berlin")
    tick = next_fire_time(berlin, at("2026-03-28T12:00:00+00:00"))
    assert tick is not None
    assert tick_label(berlin, tick) == "2026-03-29T03:00:00+02:00"


def test_seconds_field() -> None:
    every_two = Schedule("*/2 * * * * *")
    assert next_fire_time(every_two, at("2026-01-01T00:00:01.5+00:00")) == at(
        "2026-01-01T00:00:02+00:00"
    )


def test_due_ticks_are_on_time_within_the_grace() -> None:
    due = due_ticks(UTC_HOURLY, at("2026-01-01T09:59:00+00:00"), at("2026-01-01T10:00:30+00:00"))
    assert due.on_time == (at("2026-01-01T10:00:00+00:00"),)
    assert due.latest_missed is None and due.missed == 0
    assert due.to_fire(MissedTicks.SKIP) == due.on_time


def test_nothing_is_due_before_the_next_tick() -> None:
    due = due_ticks(UTC_HOURLY, at("2026-01-01T10:00:00+00:00"), at("2026-01-01T10:59:59+00:00"))
    assert due.newest is None and due.to_fire(MissedTicks.RUN_ONCE) == ()


def test_missed_ticks_are_skipped_or_caught_up_once() -> None:
    last, now = at("2026-01-01T04:30:00+00:00"), at("2026-01-01T10:20:00+00:00")
    due = due_ticks(UTC_HOURLY, last, now)
    assert due.on_time == ()
    assert due.missed == 6  # 05:00 .. 10:00
    assert due.latest_missed == at("2026-01-01T10:00:00+00:00")
    assert due.newest == due.latest_missed
    assert due.to_fire(MissedTicks.SKIP) == ()
    assert due.to_fire(MissedTicks.RUN_ONCE) == (at("2026-01-01T10:00:00+00:00"),)


def test_a_catch_up_and_on_time_ticks_fire_together() -> None:
    every_second = Schedule("* * * * * *")
    last, now = at("2026-01-01T10:00:00+00:00"), at("2026-01-01T10:02:00+00:00")
    due = due_ticks(every_second, last, now, grace=timedelta(seconds=2))
    assert due.on_time == (at("2026-01-01T10:01:59+00:00"), at("2026-01-01T10:02:00+00:00"))
    assert due.latest_missed == at("2026-01-01T10:01:58+00:00")
    assert due.missed == 118
    assert due.to_fire(MissedTicks.RUN_ONCE) == (due.latest_missed, *due.on_time)


def test_a_tick_exactly_at_the_grace_boundary_is_missed_not_lost() -> None:
    last = at("2026-01-01T09:00:00+00:00")
    due = due_ticks(UTC_HOURLY, last, at("2026-01-01T10:01:00+00:00"))
    assert due.latest_missed == at("2026-01-01T10:00:00+00:00") and due.missed == 1


EVENT = {
    "id": "e-1",
    "type": "order.created",
    "source": "shop",
    "data": {"amount": 150, "currency": "EUR"},
}


@pytest.mark.parametrize(
    ("trigger", "matches"),
    [
        (EventTrigger("order.created"), True),
        (EventTrigger("order.paid"), False),
        (EventTrigger("order.created", "data.amount > 100"), True),
        (EventTrigger("order.created", "data.amount > 200"), False),
        (EventTrigger("order.created", "source == 'shop' and data.currency == 'EUR'"), True),
        (EventTrigger("order.created", "data.missing > 1"), False),  # cannot evaluate
        (EventTrigger("order.created", "time is None"), True),
    ],
)
def test_event_matching(trigger: EventTrigger, matches: bool) -> None:
    assert event_matches(trigger, EVENT) is matches


def test_run_ids_are_stable_per_cause_and_distinct_across_causes() -> None:
    assert derived_run_id("w1", "event", "e-1") == derived_run_id("w1", "event", "e-1")
    assert derived_run_id("w1", "event", "e-1") != derived_run_id("w2", "event", "e-1")
    assert derived_run_id("w1", "event", "x") != derived_run_id("w1", "after", "x")
    assert len(idempotent_run_id("w1", "key")) == 32
