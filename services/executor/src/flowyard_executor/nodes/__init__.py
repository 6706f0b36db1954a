"""Handlers of the action nodes (http, email, slack, query) the executor runs in-process.

Each takes a config whose templates the caller has already rendered and returns a
:class:`NodeOutcome`; none raises for a failure of the outside world. The error codes:

| code | when |
|---|---|
| node.invalid | the rendered config breaks a rule of ``flowyard.domain.node_config`` |
| http.connection / http.timeout | the host is unreachable or refused / the node timed out |
| http.status | a status outside ``expected_status`` (default 2xx/3xx); output is set |
| http.response_too_large | the body is over 1 MiB |
| email.connection / email.delivery | the SMTP server is unreachable / refused the message |
| email.timeout | the SMTP server stopped answering mid-way |
| slack.not_configured / slack.invalid_channel | no bot token / channel without '#' |
| slack.api_error / slack.rate_limited | Slack said ``ok: false`` / HTTP 429 |
| slack.connection / slack.timeout | Slack is unreachable / did not answer in time |
| query.connection / query.timeout / query.error | the source is unreachable / slow / refused |
| query.not_a_number | the result is not a number (or there is none) |
| threshold.failure | the value crossed ``failure_threshold``; output is set |
"""

from flowyard_executor.nodes.email import EmailSender
from flowyard_executor.nodes.http import MAX_RESPONSE_BYTES, run_http
from flowyard_executor.nodes.outcome import INVALID_CONFIG, NodeOutcome
from flowyard_executor.nodes.query import QueryChecker
from flowyard_executor.nodes.slack import SlackPoster

__all__ = [
    "INVALID_CONFIG",
    "MAX_RESPONSE_BYTES",
    "EmailSender",
    "NodeOutcome",
    "QueryChecker",
    "SlackPoster",
    "run_http",
]
