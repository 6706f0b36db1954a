"""Alert rules (who gets what, recipient checks, dedup key, backoff, rate limit), the
alert text and its suggested resolutions, the protobuf mapping and the CLI's parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from flowyard.alert_codec import policy_from_proto, policy_to_proto
from flowyard.cli.alerts import AlertUsageError, parse_kinds, render_policies
from flowyard.domain.alerts import (
    AlertKind,
    AlertPolicy,
    Backoff,
    Channel,
    Recipient,
    RunSubscription,
    TokenBucket,
    alert_id,
    domain_problem,
    email_problem,
    policy_problems,
    recipients_for,
    slack_channel_problem,
)
from flowyard.v1 import alerts_pb2
from flowyard_alerter.messages import AlertContext, render, suggested_resolution
from flowyard_alerter.senders import message_id

ALLOWED = ["example.com"]
AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def email(address: str) -> Recipient:
    return Recipient(Channel.EMAIL, address)


def slack(channel: str) -> Recipient:
    return Recipient(Channel.SLACK, channel)


# --- recipients checked when saved -----------------------------------------------------


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("ops@example.com", None),
        ("Ops@EXAMPLE.com", None),
        ("ops@sub.example.com", "domain 'sub.example.com' is not an allowed alert domain"),
        ("eve@gmail.com", "'eve@gmail.com': domain 'gmail.com' is not an allowed"),
        ("not-an-address", "is not an email address"),
        ("a@localhost", "is not an email address"),
    ],
)
def test_email_addresses_must_be_in_an_allowed_domain(address: str, problem: str | None) -> None:
    found = email_problem(address, ALLOWED)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_no_allowed_domain_refuses_every_address_and_says_how_to_add_one() -> None:
    found = email_problem("ops@example.com", [])
    assert found is not None and "flowyard alert domains --add" in found


@pytest.mark.parametrize("channel", ["#ops", "#billing-alerts", "#a_b.c"])
def test_slack_channels_are_accepted(channel: str) -> None:
    assert slack_channel_problem(channel) is None


@pytest.mark.parametrize(
    ("channel", "problem"),
    [
        ("ops", "is not a channel"),
        ("@alice", "direct messages are not allowed"),
        ("U024BE7LH", "is not a channel"),
        ("#Ops", "not a valid Slack channel name"),
        ("#has space", "not a valid Slack channel name"),
    ],
)
def test_anything_but_a_channel_is_refused(channel: str, problem: str) -> None:
    found = slack_channel_problem(channel)
    assert found is not None and problem in found and channel in found


def test_domains_must_be_domain_names() -> None:
    assert domain_problem("example.com") is None
    assert domain_problem("@Example.COM") is None
    assert domain_problem("localhost") is not None
    assert domain_problem("exa mple.com") is not None


def test_every_policy_problem_is_reported_with_its_field() -> None:
    policy = AlertPolicy(
        name="bad name!",
        emails=("eve@gmail.com",),
        slack_channels=("ops",),
        kinds=frozenset({AlertKind.RUNTIME}),
    )
    fields = {p.field for p in policy_problems(policy, ALLOWED)}
    assert fields == {
        "name",
        "workflow_type",
        "runtime_threshold_seconds",
        "emails[0]",
        "slack_channels[0]",
    }
    nobody = AlertPolicy(name="p", workflow_type="t")
    assert [p.field for p in policy_problems(nobody, ALLOWED)] == ["emails"]


# --- who gets what ---------------------------------------------------------------------


def test_policies_cover_a_type_or_one_workflow_of_it() -> None:
    by_type = AlertPolicy(name="a", workflow_type="billing")
    one = AlertPolicy(name="b", workflow_type="billing", workflow="nightly")
    only_name = AlertPolicy(name="c", workflow="nightly")
    assert by_type.covers("anything", "billing") and not by_type.covers("x", "etl")
    assert one.covers("nightly", "billing") and not one.covers("other", "billing")
    assert not one.covers("nightly", "etl")
    assert only_name.covers("nightly", "whatever")


def test_success_only_when_the_policy_enables_it_and_always_for_subscribers() -> None:
    default = AlertPolicy(name="ops", workflow_type="billing", emails=("ops@example.com",))
    wins = AlertPolicy(
        name="wins",
        workflow_type="billing",
        slack_channels=("#wins",),
        kinds=frozenset({AlertKind.SUCCEEDED}),
    )
    subscription = RunSubscription("s1", "run-1", emails=("me@example.com",))
    policies = [default, wins]
    succeeded = recipients_for(AlertKind.SUCCEEDED, "nightly", "billing", policies, [subscription])
    assert succeeded == [email("me@example.com"), slack("#wins")]
    failed = recipients_for(AlertKind.FAILED, "nightly", "billing", policies, [subscription])
    assert failed == [email("me@example.com"), email("ops@example.com")]
    # Upstream alerts are for the downstream workflows' policies, not a run's subscribers.
    upstream = recipients_for(AlertKind.UPSTREAM, "nightly", "billing", policies, [subscription])
    assert upstream == [email("ops@example.com")]
    # Dry runs alert their subscribers only.
    dry = recipients_for(
        AlertKind.FAILED, "nightly", "billing", policies, [subscription], include_policies=False
    )
    assert dry == [email("me@example.com")]


def test_one_recipient_in_several_policies_and_subscriptions_is_alerted_once() -> None:
    policies = [
        AlertPolicy(name="a", workflow_type="t", emails=("Ops@Example.com",)),
        AlertPolicy(name="b", workflow="w", emails=("ops@example.com",), slack_channels=("#o",)),
    ]
    subscription = RunSubscription("s", "r", emails=("ops@example.com",), slack_channels=("#o",))
    found = recipients_for(AlertKind.FAILED, "w", "t", policies, [subscription])
    assert len(found) == 2
    assert {r.destination for r in found} == {"email:ops@example.com", "slack:#o"}


def test_the_dedup_key_is_run_kind_detail_and_recipient() -> None:
    key = alert_id("run-1", AlertKind.QUERY, email("Ops@Example.com"), "check:warning")
    assert key == "run-1|query|check:warning|email:ops@example.com"
    assert alert_id("run-1", AlertKind.FAILED, slack("#ops")) == "run-1|failed|slack:#ops"


# --- delivery --------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(initial_seconds=2, multiplier=2, max_seconds=20)
    assert [backoff.delay(n) for n in range(1, 6)] == [2, 4, 8, 16, 20]


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(tokens=2, updated=0.0, rate_per_minute=60, burst=2)
    assert bucket.take(0.0) == 0 and bucket.take(0.0) == 0
    assert bucket.take(0.0) == pytest.approx(1.0)
    assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0) == 0  # one token refilled in a second
    assert bucket.take(100.0) == 0 and bucket.tokens == pytest.approx(1.0)  # capped at burst


def test_alert_emails_have_a_message_id_derived_from_the_alert() -> None:
    first = message_id("run-1|failed|email:a@example.com", "alerts@example.com")
    assert first == message_id("run-1|failed|email:a@example.com", "alerts@example.com")
    assert first != message_id("run-2|failed|email:a@example.com", "alerts@example.com")
    assert first.endswith("@example.com>")


# --- what an alert says ----------------------------------------------------------------


def failure(**extra: object) -> AlertContext:
    fields: dict[str, object] = {
        "kind": AlertKind.FAILED,
        "run_id": "r1",
        "workflow_name": "nightly",
        "workflow_type": "billing",
        "workflow_version": 3,
        "event_at": AT,
        "trigger": "schedule (0 2 * * *)",
        "failed_node": "fetch",
        "error_code": "http.connection",
        "error_message": "cannot connect to api.example.com:443 <refused>",
    }
    fields.update(extra)
    return AlertContext(**fields)  # type: ignore[arg-type]


def test_a_failure_alert_names_every_fact_and_links_the_run() -> None:
    text = render(failure(), "https://flowyard.example.com/runs/")
    assert text.subject == "[Flowyard] FAILED: nightly run r1 at fetch"
    for fact in (
        "What happened:        Run r1 of workflow nightly failed.",
        "Workflow:             nightly (type billing, version 3)",
        "Run:                  r1",
        "Trigger:              schedule (0 2 * * *)",
        "Failing task:         fetch",
        "Error:                [http.connection] cannot connect to api.example.com:443",
        "Suggested resolution: Check that the endpoint named in the error is up",
        "Link:                 https://flowyard.example.com/runs/r1",
        "Resolutions: flowyard run resolutions r1",
    ):
        assert fact in text.body
    # The same facts for Slack, with its control characters escaped.
    assert "*Failing task:* `fetch`" in text.slack_text
    assert "&lt;refused&gt;" in text.slack_text
    assert "<https://flowyard.example.com/runs/r1|open run r1>" in text.slack_text


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        ("threshold.failure", "override the threshold for this run only"),
        ("expression.missing_field", "fix the trigger input or the workflow definition"),
        ("approval.rejected", "An approver rejected the run"),
        ("http.status", "fix the request"),
        ("query.timeout", "looks temporary"),  # by class: transient
        ("node.invalid", "fix the definition"),  # by class: configuration
        ("slack.not_configured", "update them"),  # by class: credentials
        ("something.new", "fix the cause, then retry the task"),
    ],
)
def test_the_suggested_resolution_follows_the_error_code(code: str, advice: str) -> None:
    assert advice in suggested_resolution(AlertKind.FAILED, code)


def test_kinds_without_an_error_get_their_own_advice() -> None:
    assert "stop the run" in suggested_resolution(AlertKind.RUNTIME, "")
    assert "warning threshold" in suggested_resolution(AlertKind.QUERY, "")
    assert "replay" in suggested_resolution(AlertKind.STOPPED, "")
    runtime = render(
        failure(kind=AlertKind.RUNTIME, failed_node="", error_code="", error_message=""),
        "http://x/runs",
    )
    assert runtime.subject == "[Flowyard] RUNNING LONG: nightly run r1"
    assert "Stop it:     flowyard run stop r1" in runtime.body
    assert "Failing task" not in runtime.body and "Error:" not in runtime.body


def test_an_upstream_alert_lists_the_delayed_workflows() -> None:
    text = render(
        failure(kind=AlertKind.UPSTREAM, delayed_workflows=("invoice", "report")),
        "http://x/runs",
    )
    assert text.subject == "[Flowyard] UPSTREAM FAILED: nightly run r1"
    assert "Delayed workflows:    invoice, report" in text.body


# --- protobuf and CLI ------------------------------------------------------------------


def test_policies_round_trip_through_protobuf() -> None:
    policy = AlertPolicy(
        name="ops",
        workflow_type="billing",
        workflow="nightly",
        emails=("ops@example.com",),
        slack_channels=("#ops",),
        kinds=frozenset({AlertKind.FAILED, AlertKind.SUCCEEDED}),
        runtime_threshold_seconds=90,
    )
    assert policy_from_proto(policy_to_proto(policy)) == policy
    with pytest.raises(ValueError, match="unknown alert kind 99"):
        policy_from_proto(alerts_pb2.AlertPolicy(name="x", kinds=[99]))  # type: ignore[list-item]


def test_the_cli_reads_kinds_as_a_comma_list_and_refuses_unknown_ones() -> None:
    assert parse_kinds(["failed,runtime", "failed", "QUERY"]) == [
        alerts_pb2.ALERT_KIND_FAILED,
        alerts_pb2.ALERT_KIND_RUNTIME,
        alerts_pb2.ALERT_KIND_QUERY,
    ]
    with pytest.raises(AlertUsageError, match="unknown kind 'nope'"):
        parse_kinds(["failed,nope"])


def test_the_cli_lists_policies_as_a_table() -> None:
    rendered = render_policies(
        [
            alerts_pb2.AlertPolicy(
                name="ops",
                workflow_type="billing",
                emails=["ops@example.com"],
                slack_channels=["#ops"],
                runtime_threshold_seconds=600,
            )
        ]
    )
    header, row = rendered.splitlines()
    assert header.split() == ["NAME", "TYPE", "/", "WORKFLOW", "KINDS", "RUNTIME", "RECIPIENTS"]
    assert "default (all but succeeded)" in row and "600s" in row
    assert "ops@example.com, #ops" in row
