"""What starts a workflow: the trigger node's ``config``, checked at registration, and the
pure rules the scheduler and the gateway apply to it (cron ticks, event matching, the run
id each cause maps to).

A trigger node's config combines any of::

    manual: true                      # start through gRPC / the CLI (default: true)
    schedule: {cron: "*/5 * * * *", timezone: Europe/Berlin, missed: skip}
    webhook: true                     # POST /webhooks/<workflow name>, HMAC-signed
    event: {type: order.created, filter: "data.amount > 100"}
    after: {workflow: upstream-name}  # when a run of that workflow succeeds

Cron expressions have five fields (minute hour day-of-month month day-of-week) or six
with a leading seconds field; they follow Debian cron (evaluated by cronsim), in the
schedule's time zone (default UTC), including its handling of DST changes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from flowyard.domain import expressions
from flowyard.domain.json import JsonValue
from flowyard.errors import ExpressionError

TRIGGER_FIELDS = ("manual", "schedule", "webhook", "event", "after")
# Names a filter sees: the CloudEvents attributes of the event.
EVENT_FILTER_NAMES = ("data", "type", "source", "id", "time", "subject")
# A tick this much older than "now" was missed (the scheduler was down or far behind).
MISFIRE_GRACE = timedelta(seconds=60)
# Missed ticks counted one by one at most this far; beyond, the count says "at least".
MAX_MISSED_COUNT = 1000


class MissedTicks(StrEnum):
    """What to do with ticks that passed while no scheduler could fire them."""

    SKIP = "skip"
    RUN_ONCE = "run_once"


@dataclass(frozen=True)
class Schedule:
    cron: str
    timezone: str = "UTC"
    missed: MissedTicks = MissedTicks.SKIP

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def describe(self) -> str:
        text = f"schedule {self.cron!r}"
        if self.timezone != "UTC":
            text += f" {self.timezone}"
        if self.missed is not MissedTicks.SKIP:
            text += f" (missed: {self.missed.value})"
        return text


@dataclass(frozen=True)
class EventTrigger:
    type: str
    filter: str = ""


@dataclass(frozen=True)
class TriggerSpec:
    """The parsed trigger config of one workflow definition."""

    manual: bool = True
    schedule: Schedule | None = None
    webhook: bool = False
    event: EventTrigger | None = None
    after: str = ""

    def describe(self) -> list[str]:
        """One short line per way the workflow starts, for listings."""
        lines: list[str] = []
        if self.manual:
            lines.append("manual")
        if self.schedule is not None:
            lines.append(self.schedule.describe())
        if self.webhook:
            lines.append("webhook")
        if self.event is not None:
            text = f"event {self.event.type}"
            lines.append(f"{text} if {self.event.filter}" if self.event.filter else text)
        if self.after:
            lines.append(f"after {self.after}")
        return lines


# --- validation (at registration) ------------------------------------------------------


def config_problems(config: Mapping[str, JsonValue]) -> list[str]:
    """Every problem of a trigger node's config, each naming the field; empty when valid."""
    problems: list[str] = []
    for key in sorted(set(config) - set(TRIGGER_FIELDS)):
        problems.append(
            f"config.{key}: unknown trigger field (allowed: {', '.join(TRIGGER_FIELDS)})"
        )
    for flag in ("manual", "webhook"):
        if flag in config and not isinstance(config[flag], bool):
            problems.append(f"config.{flag} must be true or false")
    if "schedule" in config:
        problems.extend(_schedule_problems(config["schedule"]))
    if "event" in config:
        problems.extend(_event_problems(config["event"]))
    if "after" in config:
        after = config["after"]
        workflow = after.get("workflow") if isinstance(after, Mapping) else None
        if not isinstance(workflow, str) or not workflow.strip():
            problems.append("config.after needs a workflow name: {workflow: NAME}")
        elif isinstance(after, Mapping) and set(after) - {"workflow"}:
            extra = ", ".join(sorted(set(after) - {"workflow"}))
            problems.append(f"config.after: unknown field(s) {extra} (allowed: workflow)")
    return problems


def _schedule_problems(raw: JsonValue) -> list[str]:
    if not isinstance(raw, Mapping):
        return ['config.schedule must be a mapping, e.g. {cron: "0 * * * *", timezone: UTC}']
    problems = [
        f"config.schedule: unknown field {key!r} (allowed: cron, timezone, missed)"
        for key in sorted(set(raw) - {"cron", "timezone", "missed"})
    ]
    cron = raw.get("cron")
    if not isinstance(cron, str) or not cron.strip():
        problems.append("config.schedule.cron is required (e.g. '*/5 * * * *')")
    elif (problem := cron_problem(cron)) is not None:
        problems.append(f"config.schedule.cron {cron!r}: {problem}")
    zone = raw.get("timezone", "UTC")
    if not isinstance(zone, str) or (problem := timezone_problem(zone)) is not None:
        problems.append(f"config.schedule.timezone {zone!r}: unknown time zone (e.g. UTC)")
    missed = raw.get("missed", MissedTicks.SKIP.value)
    if missed not in {m.value for m in MissedTicks}:
        problems.append(f"config.schedule.missed {missed!r}: must be 'skip' or 'run_once'")
    return problems


def _event_problems(raw: JsonValue) -> list[str]:
    if not isinstance(raw, Mapping):
        return ["config.event must be a mapping, e.g. {type: order.created}"]
    problems = [
        f"config.event: unknown field {key!r} (allowed: type, filter)"
        for key in sorted(set(raw) - {"type", "filter"})
    ]
    event_type = raw.get("type")
    if not isinstance(event_type, str) or not event_type.strip():
        problems.append("config.event.type is required (the event type to match)")
    event_filter = raw.get("filter", "")
    if not isinstance(event_filter, str):
        problems.append("config.event.filter must be an expression (a string)")
    elif event_filter.strip() and (problem := expressions.expression_problem(event_filter)):
        problems.append(f"config.event.filter: {problem}")
    return problems


def cron_problem(cron: str) -> str | None:
    """None when ``cron`` is a valid 5- or 6-field expression that ever fires."""
    if len(cron.split()) not in (5, 6):
        return "needs 5 fields (minute hour day month weekday) or 6 with leading seconds"
    try:
        next(CronSim(cron, datetime(2000, 1, 1, tzinfo=UTC)))
    except CronSimError as exc:
        return str(exc).lower()
    except StopIteration:
        return "never fires"
    return None


def timezone_problem(zone: str) -> str | None:
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return "unknown time zone"
    return None


# --- reading a stored definition's trigger (lenient: it was validated when stored) -----


def parse_trigger(config: Mapping[str, JsonValue]) -> TriggerSpec:
    manual = config.get("manual", True)
    schedule = None
    raw = config.get("schedule")
    if isinstance(raw, Mapping) and isinstance(raw.get("cron"), str):
        zone = raw.get("timezone", "UTC")
        missed = raw.get("missed", MissedTicks.SKIP.value)
        if isinstance(zone, str) and timezone_problem(zone) is None:
            schedule = Schedule(
                cron=str(raw["cron"]),
                timezone=zone,
                missed=MissedTicks.RUN_ONCE if missed == "run_once" else MissedTicks.SKIP,
            )
    event = None
    raw = config.get("event")
    if isinstance(raw, Mapping) and isinstance(raw.get("type"), str) and raw["type"]:
        event_filter = raw.get("filter", "")
        event = EventTrigger(
            str(raw["type"]), event_filter if isinstance(event_filter, str) else ""
        )
    raw = config.get("after")
    after = raw.get("workflow") if isinstance(raw, Mapping) else ""
    return TriggerSpec(
        manual=manual if isinstance(manual, bool) else True,
        schedule=schedule,
        webhook=config.get("webhook") is True,
        event=event,
        after=after if isinstance(after, str) else "",
    )


# --- schedules -------------------------------------------------------------------------


def _ticks(schedule: Schedule, after: datetime, reverse: bool = False) -> Iterator[datetime]:
    """Ticks strictly after ``after`` (or at/before it, newest first, with ``reverse``),
    as UTC times."""
    local = after.astimezone(schedule.zone)
    try:
        for tick in CronSim(schedule.cron, local, reverse=reverse):
            yield tick.astimezone(UTC)
    except CronSimError:
        return


def next_fire_time(schedule: Schedule, after: datetime) -> datetime | None:
    """The first tick strictly after ``after``; None when there is none (50 years)."""
    return next(_ticks(schedule, after), None)


@dataclass(frozen=True)
class DueTicks:
    """What a schedule owes between its last handled tick and now."""

    on_time: tuple[datetime, ...] = ()
    # The newest tick older than the misfire grace, and how many such ticks there were.
    latest_missed: datetime | None = None
    missed: int = 0

    @property
    def newest(self) -> datetime | None:
        candidates = [*self.on_time, *([self.latest_missed] if self.latest_missed else [])]
        return max(candidates) if candidates else None

    def to_fire(self, policy: MissedTicks) -> tuple[datetime, ...]:
        """The ticks that start a run under ``policy``: every on-time tick; with
        ``run_once``, also one run for everything missed (at the newest missed tick)."""
        if policy is MissedTicks.RUN_ONCE and self.latest_missed is not None:
            return (self.latest_missed, *self.on_time)
        return self.on_time


def due_ticks(
    schedule: Schedule, last: datetime, now: datetime, grace: timedelta = MISFIRE_GRACE
) -> DueTicks:
    """Ticks in (``last``, ``now``]: those within ``grace`` of now are on time, older ones
    were missed."""
    if now <= last:
        return DueTicks()
    boundary = max(last, now - grace)
    on_time: list[datetime] = []
    for tick in _ticks(schedule, boundary):
        if tick > now:
            break
        on_time.append(tick)
    latest_missed = None
    missed = 0
    if boundary > last:
        # Reverse iteration yields ticks before its start; nudged so a tick exactly at the
        # boundary counts as the newest missed one.
        start = boundary + timedelta(microseconds=1) if not boundary.microsecond else boundary
        newest = next(_ticks(schedule, start, reverse=True), None)
        latest_missed = newest if newest is not None and newest > last else None
        if latest_missed is not None:
            for tick in _ticks(schedule, last):
                if tick > boundary or missed >= MAX_MISSED_COUNT:
                    break
                missed += 1
    return DueTicks(tuple(on_time), latest_missed, missed)


def tick_label(schedule: Schedule, tick: datetime) -> str:
    """A tick as ISO 8601 in the schedule's own time zone (the run's trigger detail)."""
    return tick.astimezone(schedule.zone).isoformat()


# --- events ----------------------------------------------------------------------------


def event_scope(event: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
    """The names an event filter sees: ``data``, ``type``, ``source``, ``id``, ``time``,
    ``subject`` (absent attributes are null)."""
    return {name: event.get(name) for name in EVENT_FILTER_NAMES}


def event_matches(trigger: EventTrigger, event: Mapping[str, JsonValue]) -> bool:
    """The event has the trigger's type and passes its filter.

    A filter that cannot be evaluated on this event (a missing field, a type error)
    does not match: an event without ``data.amount`` is not an order over 100.
    """
    if event.get("type") != trigger.type:
        return False
    if not trigger.filter.strip():
        return True
    try:
        return expressions.evaluate_condition(trigger.filter, event_scope(event))
    except ExpressionError:
        return False


# --- run ids ---------------------------------------------------------------------------


def derived_run_id(workflow_id: str, cause: str, detail: str) -> str:
    """The one run id of ``workflow_id`` for one cause (a tick, an event id, an upstream
    run): however often the cause is seen, and by however many instances, it maps to the
    same run, so creating the run is create-if-new."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"flowyard:{cause}:{workflow_id}:{detail}").hex


def idempotent_run_id(workflow_id: str, key: str) -> str:
    """The run id an idempotency key maps to; the same as the gateway's ``StartRun``, so
    one key names one run whether it came through gRPC or a webhook."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{workflow_id}/{key}").hex
