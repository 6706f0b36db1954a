"""``flowyard run stop|retry|restart|rerun|skip|resume|replay|compare|resolutions|resolve``.

Each command is one call to the gateway's RunControlService. Every invocation sends its
own request id (``--request-id`` to choose one), so a command sent twice by mistake acts
once; the scheduler carries the command out a moment later (``flowyard run get RUN_ID``
shows its effect and the audit trail). Commands that do not fit the run's state are
refused by the gateway, naming the state (exit code 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format

from flowyard.cli import render, rpc, workflows
from flowyard.codec import json_to_struct, json_to_value
from flowyard.v1 import gateway_pb2, run_pb2

EXIT_OK = 0

Watch = Callable[[rpc.Gateway, str], run_pb2.Run]


def _out(text: str) -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- argument types (bad values are usage errors, exit code 2) ---------------------------


def json_argument(text: str) -> Any:
    """``--output``/``--input``: JSON text, or ``@FILE`` (JSON or YAML)."""
    try:
        value = workflows.load_input(text)
        json_to_value(value)  # plain JSON data only
    except workflows.LoadError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"not plain JSON data: {exc}") from exc
    return value


def setting_argument(text: str) -> tuple[str, Any]:
    """``--set key=value``: the value is read as JSON when it is JSON (50, true, "x"),
    else taken as text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


# --- rendering (pure) ------------------------------------------------------------------


def _duration(seconds: float, status: int) -> str:
    if status == run_pb2.TASK_STATUS_UNSPECIFIED:
        return "-"
    return render.format_seconds(seconds) if seconds else "-"


def _status(status: int) -> str:
    return "-" if status == run_pb2.TASK_STATUS_UNSPECIFIED else render.task_status_label(status)


def render_comparison(
    response: gateway_pb2.CompareRunsResponse, run_id: str, other_run_id: str
) -> str:
    """Both runs' outcome, then a row per task: status, duration and whether outputs differ."""
    lines = [
        f"A: {run_id} ({render.run_status_label(response.status)})",
        f"B: {other_run_id} ({render.run_status_label(response.other_status)})",
        "",
    ]
    rows = []
    for task in response.tasks:
        same_status = task.status == task.other_status
        rows.append(
            [
                task.node_id,
                _status(task.status),
                _status(task.other_status) if not same_status else "same",
                _duration(task.duration_seconds, task.status),
                _duration(task.other_duration_seconds, task.other_status),
                "differs" if task.output_differs else "same",
            ]
        )
    headers = ["NODE", "STATUS A", "STATUS B", "DURATION A", "DURATION B", "OUTPUT"]
    lines.append(render.render_table(headers, rows))
    for task in response.tasks:
        if task.output_differs:
            lines += [
                "",
                f"{task.node_id}:",
                f"  A: {render.compact_json(task.output)}",
                f"  B: {render.compact_json(task.other_output)}",
            ]
    return "\n".join(lines)


def render_resolutions(response: gateway_pb2.ListResolutionsResponse, run_id: str) -> str:
    if not response.resolutions:
        return f"run {run_id} offers no resolutions (only a failed run does)"
    rows = [
        [
            r.kind,
            r.node_id or "-",
            r.error_class or "-",
            r.explanation + (f" (--set {'|'.join(r.parameters)}=...)" if r.parameters else ""),
        ]
        for r in response.resolutions
    ]
    table = render.render_table(["KIND", "NODE", "ERROR CLASS", "WHAT IT DOES"], rows)
    hint = f"apply one with: flowyard run resolve {run_id} KIND [--node NODE] [--set KEY=VALUE]"
    return f"{table}\n\n{hint}"


# --- handlers --------------------------------------------------------------------------


def _request_id(args: argparse.Namespace) -> str:
    chosen: str = getattr(args, "request_id", None) or ""
    return chosen or uuid.uuid4().hex


def _accepted(what: str, response: gateway_pb2.CommandAccepted) -> int:
    _out(f"{what}: accepted for run {response.run_id} (command {response.command_id})")
    _err(f"follow it with: flowyard run get {response.run_id} --watch")
    return EXIT_OK


def _call(gateway: rpc.Gateway, method: str, request: Any) -> Any:
    return getattr(gateway.control, method)(
        request, metadata=gateway.metadata, timeout=rpc.CALL_TIMEOUT_SECONDS
    )


def run_stop(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    request = gateway_pb2.StopRunRequest(
        run_id=args.run_id,
        cleanup=args.cleanup,
        comment=args.comment or "",
        request_id=_request_id(args),
    )
    response = _call(gateway, "StopRun", request)
    return _accepted("stop" + (" with cleanup" if args.cleanup else ""), response)


def run_retry(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    request = gateway_pb2.RetryTaskRequest(
        run_id=args.run_id,
        node_id=args.node_id,
        comment=args.comment or "",
        request_id=_request_id(args),
    )
    return _accepted(f"retry of {args.node_id}", _call(gateway, "RetryTask", request))


def run_restart(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    request = gateway_pb2.RestartRunRequest(
        run_id=args.run_id, comment=args.comment or "", request_id=_request_id(args)
    )
    return _accepted("restart on the current version", _call(gateway, "RestartRun", request))


def run_rerun(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    request = gateway_pb2.RerunFromRequest(
        run_id=args.run_id,
        node_id=args.node_id,
        comment=args.comment or "",
        request_id=_request_id(args),
    )
    return _accepted(f"rerun from {args.node_id}", _call(gateway, "RerunFrom", request))


def run_skip(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    request = gateway_pb2.SkipTaskRequest(
        run_id=args.run_id,
        node_id=args.node_id,
        comment=args.comment or "",
        request_id=_request_id(args),
    )
    if args.output is not None:
        request.output.CopyFrom(json_to_value(args.output))
    return _accepted(f"skip of {args.node_id}", _call(gateway, "SkipTask", request))


def run_resume(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    request = gateway_pb2.ResumeRunRequest(
        run_id=args.run_id, comment=args.comment or "", request_id=_request_id(args)
    )
    return _accepted("resume", _call(gateway, "ResumeRun", request))


def run_compare(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    request = gateway_pb2.CompareRunsRequest(run_id=args.run_a, other_run_id=args.run_b)
    response = _call(gateway, "CompareRuns", request)
    if args.output == "json":
        _out(json_format.MessageToJson(response))
    else:
        _out(render_comparison(response, args.run_a, args.run_b))
    return EXIT_OK


def run_resolutions(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    request = gateway_pb2.ListResolutionsRequest(run_id=args.run_id)
    response = _call(gateway, "ListResolutions", request)
    if args.output == "json":
        _out(json_format.MessageToJson(response))
    else:
        _out(render_resolutions(response, args.run_id))
    return EXIT_OK


def run_resolve(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    parameters = dict(args.settings or [])
    request = gateway_pb2.ApplyResolutionRequest(
        run_id=args.run_id,
        kind=args.kind,
        node_id=args.node or "",
        comment=args.comment or "",
        request_id=_request_id(args),
    )
    if parameters:
        request.parameters.CopyFrom(json_to_struct(parameters))
    what = args.kind + (f" on {args.node}" if args.node else "")
    return _accepted(what, _call(gateway, "ApplyResolution", request))


def _replay(watch: Watch) -> Callable[[argparse.Namespace, rpc.Gateway], int]:
    def run_replay(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
        request = gateway_pb2.ReplayRunRequest(
            run_id=args.run_id, comment=args.comment or "", request_id=_request_id(args)
        )
        if args.input is not None:
            request.input.CopyFrom(json_to_value(args.input))
        response = _call(gateway, "ReplayRun", request)
        _out(response.run_id)
        if not response.created:
            _err(f"note: request id {request.request_id!r} matched this earlier replay")
        if not args.watch:
            return EXIT_OK
        final = watch(gateway, response.run_id)
        _out(render.render_run_result(final))
        return render.watch_exit_code(final)

    return run_replay


# --- the parser ------------------------------------------------------------------------


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    watch: Watch,
) -> None:
    """The run-control commands under ``flowyard run``; ``watch`` follows a run to its end."""

    def command(
        name: str,
        handler: Callable[[argparse.Namespace, rpc.Gateway], int],
        help_text: str,
        node: str = "",
        acts: bool = True,
    ) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, parents=[common], help=help_text)
        parser.add_argument("run_id", metavar="RUN_ID")
        if node:
            parser.add_argument("node_id", metavar="NODE", help=node)
        if acts:
            parser.add_argument("--comment", help="why; kept in the run's audit trail")
            parser.add_argument(
                "--request-id",
                metavar="ID",
                help="the command's id (default: a new one); the same id acts only once",
            )
        parser.set_defaults(handler=handler)
        return parser

    stop = command(
        "stop", run_stop, "stop a run: running tasks are cancelled (non-cancellable ones finish)"
    )
    stop.add_argument(
        "--cleanup", action="store_true", help="then run the workflow's cleanup nodes"
    )
    command("retry", run_retry, "run a failed task again with the same input", "the failed task")
    command("restart", run_restart, "continue a failed run on the workflow's current version")
    command(
        "rerun",
        run_rerun,
        "run a task and everything after it again (upstream results are kept)",
        "the task to rerun from",
    )
    skip = command("skip", run_skip, "mark a failed task skipped and continue", "the failed task")
    skip.add_argument(
        "--output",
        type=json_argument,
        metavar="JSON|@FILE",
        help="what downstream tasks see as its output",
    )
    command("resume", run_resume, "run every failed task of a failed run again")
    replay = command(
        "replay", _replay(watch), "start a new run with the same (or new) trigger data"
    )
    replay.add_argument(
        "--input",
        type=json_argument,
        metavar="JSON|@FILE",
        help="trigger data instead of the original's",
    )
    replay.add_argument("--watch", action="store_true", help="follow the new run until it ends")

    compare = commands.add_parser("compare", parents=[common], help="compare two runs task by task")
    compare.add_argument("run_a", metavar="RUN_A")
    compare.add_argument("run_b", metavar="RUN_B")
    compare.add_argument("-o", "--output", choices=["table", "json"], default="table")
    compare.set_defaults(handler=run_compare)

    listing = command("resolutions", run_resolutions, "what fits a failed run's errors", acts=False)
    listing.add_argument("-o", "--output", choices=["table", "json"], default="table")
    resolve = command("resolve", run_resolve, "apply one of a failed run's resolutions")
    resolve.add_argument(
        "kind", metavar="KIND", help="e.g. retry_task, skip_task, restart, override_parameter"
    )
    resolve.add_argument("--node", metavar="NODE", help="the task it is for (default: the first)")
    resolve.add_argument(
        "--set",
        dest="settings",
        action="append",
        type=setting_argument,
        metavar="KEY=VALUE",
        help="override_parameter: a new value for this run only (repeatable)",
    )
