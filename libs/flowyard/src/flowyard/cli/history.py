"""``flowyard run list|export|graph|logs``, ``flowyard analytics`` and ``flowyard admin
purge|storage``: the HistoryService from a terminal.

Rendering is pure (``render_*``, tested without a gateway); the handlers open their own
channel to the gateway's address and send the same bearer token as every other command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, tzinfo
from typing import IO, Any, TextIO, cast

import grpc
from google.protobuf import json_format

from flowyard import codec
from flowyard.cli import render, rpc
from flowyard.domain.run import RunStatus
from flowyard.v1 import history_pb2, history_pb2_grpc

Handler = Callable[[argparse.Namespace, rpc.Gateway], int]

_RANGES = {
    "today": history_pb2.DATE_RANGE_TODAY,
    "24h": history_pb2.DATE_RANGE_LAST_24H,
    "7d": history_pb2.DATE_RANGE_LAST_7D,
    "30d": history_pb2.DATE_RANGE_LAST_30D,
}
_SORTS = {"started": history_pb2.RUN_SORT_STARTED, "duration": history_pb2.RUN_SORT_DURATION}


class HistoryUsageError(Exception):
    """Bad arguments; main() prints ``error: ...`` and exits with 2."""


@contextmanager
def history_stub(gateway: rpc.Gateway) -> Iterator[history_pb2_grpc.HistoryServiceStub]:
    with grpc.insecure_channel(gateway.address) as channel:
        yield history_pb2_grpc.HistoryServiceStub(channel)


def _out(text: str) -> None:
    print(text, flush=True)


# --- arguments -> request ------------------------------------------------------------------


def parse_moment(text: str, what: str) -> datetime:
    """An ISO date or date-time; without an offset it is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise HistoryUsageError(
            f"{what}: {text!r} is not a date (2025-12-03) or date-time (2025-12-03T10:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_filter(args: argparse.Namespace) -> history_pb2.RunFilter:
    message = history_pb2.RunFilter(
        workflow=args.workflow or "",
        version=args.version or 0,
        workflow_type=args.type or "",
        trigger_kind=args.trigger or "",
        started_by=args.started_by or "",
        search=args.search or "",
    )
    for given in args.status or ():
        for name in filter(None, given.split(",")):
            try:
                status = RunStatus(name.strip().lower())
            except ValueError:
                choices = ", ".join(s.value for s in RunStatus)
                raise HistoryUsageError(f"--status: {name!r} is not one of {choices}") from None
            message.statuses.append(codec.RUN_STATUS_TO_PROTO[status])
    if args.since:
        if args.since in _RANGES:
            message.range = _RANGES[args.since]
        else:
            message.since.FromDatetime(parse_moment(args.since, "--since").astimezone(UTC))
    if args.until:
        message.until.FromDatetime(parse_moment(args.until, "--until").astimezone(UTC))
    return message


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--status",
        action="append",
        metavar="STATUS",
        help="queued, running, waiting, stopping, stopped, succeeded, failed "
        "(repeat or comma-separate for several)",
    )
    parser.add_argument("--workflow", metavar="NAME", help="one workflow")
    parser.add_argument("--version", type=int, help="one version of --workflow")
    parser.add_argument("--type", metavar="TYPE", help="workflow type")
    parser.add_argument(
        "--trigger", metavar="KIND", help="manual, api, schedule, webhook, event, workflow, replay"
    )
    parser.add_argument("--started-by", metavar="WHO")
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help="today, 24h, 7d, 30d, or a date/date-time (UTC unless it has an offset)",
    )
    parser.add_argument("--until", metavar="WHEN", help="a date/date-time (exclusive)")
    parser.add_argument(
        "--search",
        metavar="TEXT",
        help="workflow name part, run id prefix, month (dec) or date (2025-12-03)",
    )


def add_sort_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sort", choices=sorted(_SORTS), default="started")
    parser.add_argument("--asc", action="store_true", help="oldest/shortest first")


# --- rendering ---------------------------------------------------------------------------------


def _duration(run: history_pb2.RunSummary) -> str:
    if not run.HasField("duration"):
        return "-"
    return render.format_seconds(run.duration.ToTimedelta().total_seconds())


def render_run_list(
    runs: Sequence[history_pb2.RunSummary], next_cursor: str, tz: tzinfo | None = None
) -> str:
    rows = [
        [
            run.run_id,
            run.workflow_name + (" (test)" if run.test else ""),
            str(run.workflow_version),
            render.run_status_label(run.status),
            run.trigger_kind or "-",
            run.started_by or "-",
            render.format_time(run, "created_at", tz, "%Y-%m-%d %H:%M:%S"),
            _duration(run),
        ]
        for run in runs
    ]
    if not rows:
        text = "no runs match"
    else:
        text = render.render_table(
            ["RUN", "WORKFLOW", "V", "STATUS", "TRIGGER", "BY", "STARTED", "DURATION"], rows
        )
    if next_cursor:
        text += f"\nmore: --cursor {next_cursor}"
    return text


def _stats(stats: history_pb2.DurationStats) -> str:
    if not stats.count:
        return "-"
    return (
        f"avg {render.format_seconds(stats.avg_seconds)}  "
        f"p95 {render.format_seconds(stats.p95_seconds)}  "
        f"max {render.format_seconds(stats.max_seconds)}"
    )


def _rate(value: float, decided: int) -> str:
    return f"{value * 100:.1f}%" if decided else "-"


def render_analytics(result: history_pb2.Analytics, tz: tzinfo | None = None) -> str:
    since = render.format_time(result, "since", tz, "%Y-%m-%d %H:%M", "the start")
    until = render.format_time(result, "until", tz, "%Y-%m-%d %H:%M")
    queue = result.queue
    lag = "unknown" if queue.consumer_lag < 0 else str(queue.consumer_lag)
    lines = [
        f"{result.runs} runs from {since} to {until}",
        f"queue: {queue.dispatched_not_started} tasks dispatched, not started; "
        f"{queue.running_tasks} running; {queue.queued_runs} runs queued; "
        f"executor lag {lag}",
        "",
        "Workflows",
        render.render_table(
            ["WORKFLOW", "TYPE", "RUNS", "OK", "FAILED", "SUCCESS", "DURATION"],
            [
                [
                    w.workflow,
                    w.workflow_type or "-",
                    str(w.runs),
                    str(w.succeeded),
                    str(w.failed),
                    _rate(w.success_rate, w.succeeded + w.failed),
                    _stats(w.duration),
                ]
                for w in result.workflows
            ],
        )
        if result.workflows
        else "  (none)",
        "",
        "Slowest steps (by p95)",
        render.render_table(
            ["WORKFLOW", "STEP", "COUNT", "FAILED", "DURATION"],
            [
                [s.workflow, s.node_id, str(s.duration.count), str(s.failed), _stats(s.duration)]
                for s in result.slowest_steps
            ],
        )
        if result.slowest_steps
        else "  (none)",
        "",
        "By type",
        render.render_table(
            ["TYPE", "RUNS", "OK", "FAILED", "SUCCESS"],
            [
                [
                    t.workflow_type or "-",
                    str(t.runs),
                    str(t.succeeded),
                    str(t.failed),
                    _rate(t.success_rate, t.succeeded + t.failed),
                ]
                for t in result.types
            ],
        )
        if result.types
        else "  (none)",
        "",
        "By day (UTC): runs, success rate and duration trend",
        render.render_table(
            ["DAY", "RUNS", "OK", "FAILED", "SUCCESS", "AVG", "P95"],
            [
                [
                    d.day,
                    str(d.runs),
                    str(d.succeeded),
                    str(d.failed),
                    _rate(d.success_rate, d.succeeded + d.failed),
                    render.format_seconds(d.avg_seconds) if d.avg_seconds else "-",
                    render.format_seconds(d.p95_seconds) if d.p95_seconds else "-",
                ]
                for d in result.days
            ],
        )
        if result.days
        else "  (none)",
    ]
    return "\n".join(lines)


def render_log_line(line: history_pb2.LogLine) -> str:
    stamp = line.time.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds")
    level = f" {line.level}" if line.level else ""
    where = f"{line.node_id}#{line.attempt}"
    return f"{stamp.replace('+00:00', 'Z')} {where} {line.stream}{level} {line.text}"


def render_storage(counts: history_pb2.StorageCounts, tz: tzinfo | None = None) -> str:
    rows = [
        [
            w.workflow or "(dry runs)",
            str(w.runs),
            str(w.log_lines),
            f"{w.retention_days} d" if w.retention_days else "for ever",
            render.format_time(w, "oldest_run", tz, "%Y-%m-%d"),
        ]
        for w in counts.workflows
    ]
    table = render.render_table(["WORKFLOW", "RUNS", "LOG LINES", "KEPT", "OLDEST"], rows)
    return f"{table}\ntotal: {counts.runs} runs, {counts.log_lines} log lines"


def render_purge(response: history_pb2.PurgeRunsResponse) -> str:
    verb = "would delete" if response.dry_run else "deleted"
    if not response.workflows:
        return f"nothing expired: {verb} 0 runs"
    lines = [
        f"{w.workflow}: {verb} {w.runs} runs older than {w.retention_days} days"
        + ("" if response.dry_run else f" ({w.attempts} attempts, {w.log_chunks} log chunks)")
        for w in response.workflows
    ]
    lines.append(f"total: {verb} {response.runs} runs")
    return "\n".join(lines)


# --- handlers ----------------------------------------------------------------------------------


def run_list(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    request = history_pb2.ListRunsRequest(
        filter=run_filter(args),
        sort=_SORTS[args.sort],
        ascending=args.asc,
        limit=args.limit,
        cursor=args.cursor or "",
    )
    with history_stub(gateway) as history:
        response = history.ListRuns(
            request, metadata=gateway.metadata, timeout=rpc.CALL_TIMEOUT_SECONDS
        )
    if args.output == "json":
        for run in response.runs:
            _out(json_format.MessageToJson(run, indent=None))
        if response.next_cursor:
            print(f"more: --cursor {response.next_cursor}", file=sys.stderr)
        return 0
    _out(render_run_list(response.runs, response.next_cursor))
    return 0


@contextmanager
def _output(path: str | None, binary: bool = False) -> Iterator[IO[Any]]:
    if not path or path == "-":
        yield sys.stdout.buffer if binary else sys.stdout
        return
    try:
        handle = open(path, "wb" if binary else "w", encoding=None if binary else "utf-8")  # noqa: SIM115
    except OSError as exc:
        raise HistoryUsageError(f"-o: cannot write {path}: {exc.strerror}") from None
    with handle:
        yield handle


def run_export(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    request = history_pb2.ExportRunsRequest(
        filter=run_filter(args), sort=_SORTS[args.sort], ascending=args.asc
    )
    rows = 0
    with history_stub(gateway) as history, _output(args.output, binary=True) as sink:
        for chunk in history.ExportRuns(request, metadata=gateway.metadata):
            sink.write(chunk.data)
            rows += chunk.rows
    if args.output and args.output != "-":
        print(f"exported {rows} runs to {args.output}", file=sys.stderr)
    return 0


def run_graph(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    formats = {"dot": history_pb2.GRAPH_FORMAT_DOT, "mermaid": history_pb2.GRAPH_FORMAT_MERMAID}
    with history_stub(gateway) as history:
        graph = history.GetRunGraph(
            history_pb2.GetRunGraphRequest(run_id=args.run_id, format=formats[args.format]),
            metadata=gateway.metadata,
            timeout=rpc.CALL_TIMEOUT_SECONDS,
        )
    with _output(args.output) as sink:
        sink.write(graph.text)
    return 0


def _log_filter(args: argparse.Namespace) -> history_pb2.LogFilter.ValueType:
    if args.errors:
        return history_pb2.LOG_FILTER_ERRORS
    if args.output_only:
        return history_pb2.LOG_FILTER_OUTPUT
    return history_pb2.LOG_FILTER_ALL


def run_logs(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    with history_stub(gateway) as history, _output(args.output) as sink:
        sink_text = cast(TextIO, sink)
        if args.follow:
            lines = history.TailLogs(
                history_pb2.TailLogsRequest(
                    run_id=args.run_id,
                    task=args.task or "",
                    filter=_log_filter(args),
                    grep=args.grep or "",
                ),
                metadata=gateway.metadata,
            )
            for line in lines:
                sink_text.write(render_log_line(line) + "\n")
                sink_text.flush()
            return 0
        response = history.GetLogs(
            history_pb2.GetLogsRequest(
                run_id=args.run_id,
                task=args.task or "",
                filter=_log_filter(args),
                grep=args.grep or "",
            ),
            metadata=gateway.metadata,
            timeout=rpc.CALL_TIMEOUT_SECONDS,
        )
        for line in response.lines:
            sink_text.write(render_log_line(line) + "\n")
    if args.output and args.output != "-":
        print(f"wrote {len(response.lines)} lines to {args.output}", file=sys.stderr)
    return 0


def analytics(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    request = history_pb2.GetAnalyticsRequest(filter=run_filter(args), top=args.top)
    with history_stub(gateway) as history:
        result = history.GetAnalytics(
            request, metadata=gateway.metadata, timeout=rpc.CALL_TIMEOUT_SECONDS * 4
        )
    if args.output == "json":
        _out(json_format.MessageToJson(result))
    else:
        _out(render_analytics(result))
    return 0


def admin_purge(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    with history_stub(gateway) as history:
        response = history.PurgeRuns(
            history_pb2.PurgeRunsRequest(dry_run=args.dry_run, batch_size=args.batch_size),
            metadata=gateway.metadata,
            timeout=3600,
        )
    _out(render_purge(response))
    return 0


def admin_storage(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    with history_stub(gateway) as history:
        counts = history.GetStorageCounts(
            history_pb2.GetStorageCountsRequest(),
            metadata=gateway.metadata,
            timeout=rpc.CALL_TIMEOUT_SECONDS * 4,
        )
    if args.output == "json":
        _out(json_format.MessageToJson(counts))
    else:
        _out(render_storage(counts))
    return 0


def _guarded(handler: Handler) -> Handler:
    """Usage errors of these commands print like the CLI's own (exit code 2)."""

    def run(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
        try:
            return handler(args, gateway)
        except HistoryUsageError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2

    return run


# --- the parsers ----------------------------------------------------------------------------


def add_history_commands(groups: Any, runs: Any, common: argparse.ArgumentParser) -> None:
    """Add ``run list|export|graph|logs`` to ``runs`` and ``analytics``, ``admin`` to
    ``groups`` (argparse sub-parser actions)."""
    listing = runs.add_parser("list", parents=[common], help="list runs: filter, search, sort")
    add_filter_arguments(listing)
    add_sort_arguments(listing)
    listing.add_argument("--limit", type=int, default=50, help="runs per page (1-500)")
    listing.add_argument("--cursor", help="the next page (printed after a full page)")
    listing.add_argument("-o", "--output", choices=["table", "json"], default="table")
    listing.set_defaults(handler=_guarded(run_list))

    export = runs.add_parser("export", parents=[common], help="export runs as CSV")
    add_filter_arguments(export)
    add_sort_arguments(export)
    export.add_argument("--csv", action="store_true", help="CSV (the only format; the default)")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    export.set_defaults(handler=_guarded(run_export))

    graph = runs.add_parser("graph", parents=[common], help="a run's graph as DOT or Mermaid")
    graph.add_argument("run_id", metavar="RUN_ID")
    graph.add_argument("--format", choices=["dot", "mermaid"], default="dot")
    graph.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    graph.set_defaults(handler=_guarded(run_graph))

    logs = runs.add_parser("logs", parents=[common], help="a run's task logs")
    logs.add_argument("run_id", metavar="RUN_ID")
    logs.add_argument("--task", metavar="NODE_ID", help="one task only")
    which = logs.add_mutually_exclusive_group()
    which.add_argument("--errors", action="store_true", help="errors only (stderr, failures)")
    which.add_argument("--output-only", action="store_true", help="stdout lines only")
    logs.add_argument("--grep", metavar="TEXT", help="lines containing TEXT (any case)")
    logs.add_argument("--follow", "-f", action="store_true", help="stream until the run ends")
    logs.add_argument("-o", "--output", metavar="FILE", help="download to FILE")
    logs.set_defaults(handler=_guarded(run_logs))

    stats = groups.add_parser("analytics", parents=[common], help="durations, success rates")
    add_filter_arguments(stats)
    stats.add_argument("--top", type=int, default=10, help="slowest steps shown (1-100)")
    stats.add_argument("-o", "--output", choices=["table", "json"], default="table")
    stats.set_defaults(handler=_guarded(analytics))

    admin = groups.add_parser("admin", help="retention: purge expired runs, storage counts")
    ad = admin.add_subparsers(dest="command", required=True)
    purge = ad.add_parser(
        "purge", parents=[common], help="delete runs older than their workflow's retention"
    )
    purge.add_argument("--dry-run", action="store_true", help="count only")
    purge.add_argument("--batch-size", type=int, default=500)
    purge.set_defaults(handler=_guarded(admin_purge))
    storage = ad.add_parser("storage", parents=[common], help="runs and log lines per workflow")
    storage.add_argument("-o", "--output", choices=["table", "json"], default="table")
    storage.set_defaults(handler=_guarded(admin_storage))
    groups.metavar = "{" + ",".join(groups.choices) + "}"
