"""``flowyard``: register workflows, start runs and follow them from a terminal.

Exit codes: 0 done (a watched run succeeded); 1 the gateway refused the request, or a
watched run failed or was stopped; 2 bad usage or an invalid definition/input file;
3 the gateway could not be reached; 130 interrupted.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import grpc
from google.protobuf import json_format

from flowyard.cli import control, credentials, render, rpc, tokens, workflows
from flowyard.cli.alerts import add_alert_commands
from flowyard.cli.config import ConfigError, load_config
from flowyard.cli.history import add_history_commands
from flowyard.codec import json_to_value
from flowyard.history.detail import trim_run_view
from flowyard.v1 import gateway_pb2, run_pb2, workflow_pb2

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad arguments or local files; printed as ``error: ...`` with exit code 2."""


def _out(text: str) -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- workflow commands -----------------------------------------------------------------


def workflow_apply(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    # Every file is checked before anything is sent: all of them go, or none.
    checked = workflows.check_files(args.files)
    if checked.problems:
        for line in checked.problems:
            _err(line)
        count = len(checked.problems)
        _err(f"{count} problem{'s' if count != 1 else ''} found; nothing was applied")
        return EXIT_USAGE
    for _path, definition in checked.definitions:
        response = gateway.workflows.ApplyWorkflow(
            gateway_pb2.ApplyWorkflowRequest(definition=definition),
            metadata=gateway.metadata,
            timeout=rpc.CALL_TIMEOUT_SECONDS,
        )
        verb = "applied" if response.created else "unchanged"
        workflow = response.workflow
        _out(f"{verb} {workflow.definition.name or definition.name} version {workflow.version}")
    return EXIT_OK


def workflow_list(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    response = gateway.workflows.ListWorkflows(
        gateway_pb2.ListWorkflowsRequest(),
        metadata=gateway.metadata,
        timeout=rpc.CALL_TIMEOUT_SECONDS,
    )
    _out(workflows.render_workflows(response.workflows))
    return EXIT_OK


def workflow_get(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    workflow = gateway.workflows.GetWorkflow(
        gateway_pb2.GetWorkflowRequest(name=args.name, version=args.version),
        metadata=gateway.metadata,
        timeout=rpc.CALL_TIMEOUT_SECONDS,
    )
    if args.output == "json":
        _out(workflows.render_workflow_json(workflow))
    else:
        _out(workflows.render_workflow_yaml(workflow))
    return EXIT_OK


def _set_state(gateway: rpc.Gateway, name: str, state: workflow_pb2.WorkflowState.ValueType) -> int:
    workflow = gateway.workflows.SetWorkflowState(
        gateway_pb2.SetWorkflowStateRequest(name=name, state=state),
        metadata=gateway.metadata,
        timeout=rpc.CALL_TIMEOUT_SECONDS,
    )
    label = workflows.workflow_state_label(workflow.state)
    _out(f"{workflow.definition.name or name} is {label} (version {workflow.version})")
    return EXIT_OK


def workflow_pause(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    return _set_state(gateway, args.name, workflow_pb2.WORKFLOW_STATE_PAUSED)


def workflow_activate(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    return _set_state(gateway, args.name, workflow_pb2.WORKFLOW_STATE_ACTIVE)


def workflow_clone(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    workflow = gateway.workflows.CloneWorkflow(
        gateway_pb2.CloneWorkflowRequest(source=args.source, new_name=args.new_name),
        metadata=gateway.metadata,
        timeout=rpc.CALL_TIMEOUT_SECONDS,
    )
    name = workflow.definition.name or args.new_name
    label = workflows.workflow_state_label(workflow.state)
    _out(f"cloned {args.source} as {name} version {workflow.version} ({label})")
    if workflow.state == workflow_pb2.WORKFLOW_STATE_DRAFT:
        _err(f"note: a draft starts no runs; activate it with: flowyard workflow activate {name}")
    return EXIT_OK


def workflow_webhook_secret(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    """Print the secret webhook callers sign bodies with (``--rotate``: a new one)."""
    request = gateway_pb2.WebhookSecretRequest(name=args.name)
    call = (
        gateway.workflows.RotateWebhookSecret if args.rotate else gateway.workflows.GetWebhookSecret
    )
    secret = call(request, metadata=gateway.metadata, timeout=rpc.CALL_TIMEOUT_SECONDS)
    _out(secret.secret)
    verb = "rotated; the old secret no longer works" if args.rotate else "current secret"
    _err(
        f"{verb} for POST {secret.path}: sign the raw body with HMAC-SHA256 and send "
        "X-Flowyard-Signature: sha256=<hex>"
    )
    return EXIT_OK


def workflow_test(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    """Dry run: the definition runs once with the input, without being registered."""
    checked = workflows.check_files([args.file])
    if checked.problems:
        for line in checked.problems:
            _err(line)
        count = len(checked.problems)
        _err(f"{count} problem{'s' if count != 1 else ''} found; nothing was run")
        return EXIT_USAGE
    _path, definition = checked.definitions[0]
    request = gateway_pb2.DryRunWorkflowRequest(definition=definition, started_by=_user())
    if args.input is not None:
        try:
            request.input.CopyFrom(json_to_value(workflows.load_input(args.input)))
        except workflows.LoadError as exc:
            raise UsageError(f"--input: {exc}") from exc
        except (json_format.ParseError, TypeError, ValueError) as exc:
            raise UsageError(f"the run input is not plain JSON data: {exc}") from exc
    response = gateway.workflows.DryRunWorkflow(
        request, metadata=gateway.metadata, timeout=rpc.CALL_TIMEOUT_SECONDS
    )
    _out(response.run_id)
    if not args.watch:
        return EXIT_OK
    final = _watch(gateway, response.run_id)
    _out("")
    _out(render.render_run(final))
    return render.watch_exit_code(final)


# --- run commands ----------------------------------------------------------------------


def _run_input(args: argparse.Namespace) -> gateway_pb2.StartRunRequest:
    request = gateway_pb2.StartRunRequest(
        workflow=args.name, idempotency_key=args.idempotency_key or "", started_by=_user()
    )
    if args.input is not None:
        try:
            value = json.loads(args.input)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--input is not valid JSON: {exc}") from exc
    elif args.input_file is not None:
        try:
            value = workflows.load_document(args.input_file)
        except workflows.LoadError as exc:
            raise UsageError(f"{args.input_file}: {exc}") from exc
    else:
        return request
    try:
        request.input.CopyFrom(json_to_value(value))
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise UsageError(f"the run input is not plain JSON data: {exc}") from exc
    return request


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in this environment
        return ""


class WatchEndedError(Exception):
    """The gateway closed a watch before its run finished; exit code 1."""


def _show_snapshot(
    run: run_pb2.Run, previous: run_pb2.Run | None, json_lines: bool, width: int
) -> None:
    if json_lines:
        _out(json_format.MessageToJson(run, indent=None))
        return
    now = datetime.now(UTC)
    for task in render.changed_tasks(previous, run):
        _out(render.render_task_change(task, node_width=width, now=now))


def _watch(gateway: rpc.Gateway, run_id: str, *, json_lines: bool = False) -> run_pb2.Run:
    """Follow a run to its end: a line per task change (or a JSON line per snapshot)."""
    previous: run_pb2.Run | None = None
    width = 0
    stream = gateway.runs.WatchRun(
        gateway_pb2.WatchRunRequest(run_id=run_id), metadata=gateway.metadata
    )
    try:
        for run in stream:
            width = max([width, *(len(t.node_id) for t in run.tasks)])
            _show_snapshot(run, previous, json_lines, width)
            previous = run
    except KeyboardInterrupt:
        _err(f"stopped watching; run {run_id} goes on (flowyard run get {run_id})")
        raise
    if previous is None or not render.run_finished(previous):
        status = render.run_status_label(previous.status) if previous else "unknown"
        raise WatchEndedError(f"the watch of run {run_id} ended early (status {status})")
    return previous


def run_start(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    request = _run_input(args)
    response = gateway.runs.StartRun(
        request, metadata=gateway.metadata, timeout=rpc.CALL_TIMEOUT_SECONDS
    )
    _out(response.run_id)
    if not response.created:
        _err(f"note: idempotency key {request.idempotency_key!r} matched this existing run")
    if not args.watch:
        return EXIT_OK
    final = _watch(gateway, response.run_id)
    _out(render.render_run_result(final))
    return render.watch_exit_code(final)


def run_get(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    if args.watch:
        final = _watch(gateway, args.run_id, json_lines=args.output == "json")
        if args.output != "json":
            _out("")
            trimmed = trim_run_view(
                final, hide_skipped=args.hide_skipped, hide_warnings=args.hide_warnings
            )
            _out(render.render_run(trimmed))
        return render.watch_exit_code(final)
    run = gateway.runs.GetRun(
        gateway_pb2.GetRunRequest(
            run_id=args.run_id, hide_skipped=args.hide_skipped, hide_warnings=args.hide_warnings
        ),
        metadata=gateway.metadata,
        timeout=rpc.CALL_TIMEOUT_SECONDS,
    )
    if args.output == "json":
        _out(json_format.MessageToJson(run))
    else:
        _out(render.render_run(run, now=datetime.now(UTC)))
    return EXIT_OK


def _decide(args: argparse.Namespace, gateway: rpc.Gateway, approved: bool) -> int:
    gateway.runs.DecideApproval(
        gateway_pb2.DecideApprovalRequest(
            run_id=args.run_id,
            node_id=args.node_id,
            approved=approved,
            comment=args.comment or "",
            decided_by=_user(),
        ),
        metadata=gateway.metadata,
        timeout=rpc.CALL_TIMEOUT_SECONDS,
    )
    verb = "approved" if approved else "rejected"
    _out(f"{args.node_id} {verb}; run {args.run_id} goes on (flowyard run get {args.run_id})")
    return EXIT_OK


def run_approve(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    return _decide(args, gateway, approved=True)


def run_reject(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    return _decide(args, gateway, approved=False)


# --- the parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # --server is accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=argparse.SUPPRESS,
        metavar="HOST:PORT",
        help=f"gateway address (default: ${rpc.ADDRESS_ENV} or {rpc.DEFAULT_ADDRESS})",
    )
    parser = argparse.ArgumentParser(
        prog="flowyard",
        description="Register workflows, start runs and follow them.",
        epilog=f"Every call sends a bearer token: ${rpc.TOKEN_ENV}, else `token` in the config "
        "file ($FLOWYARD_CONFIG or ~/.config/flowyard/config.toml, which may also set `server`).",
        parents=[common],
    )
    groups = parser.add_subparsers(
        dest="group", required=True, metavar="{workflow,run,alert,credential,token,whoami}"
    )

    workflow = groups.add_parser("workflow", help="register and read workflow definitions")
    wf = workflow.add_subparsers(dest="command", required=True)
    apply = wf.add_parser("apply", parents=[common], help="validate and register definitions")
    apply.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        required=True,
        metavar="FILE",
        help="a YAML or JSON definition ('-' = stdin); repeat for several",
    )
    apply.set_defaults(handler=workflow_apply)
    listing = wf.add_parser("list", parents=[common], help="list workflows (latest versions)")
    listing.set_defaults(handler=workflow_list)
    get = wf.add_parser("get", parents=[common], help="print a workflow definition")
    get.add_argument("name", help="workflow name or id")
    get.add_argument("--version", type=int, default=0, help="version (default: latest)")
    get.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    get.set_defaults(handler=workflow_get)
    pause = wf.add_parser("pause", parents=[common], help="start no more runs of a workflow")
    pause.add_argument("name", help="workflow name or id")
    pause.set_defaults(handler=workflow_pause)
    activate = wf.add_parser(
        "activate", parents=[common], help="let a paused or draft workflow start runs"
    )
    activate.add_argument("name", help="workflow name or id")
    activate.set_defaults(handler=workflow_activate)
    clone = wf.add_parser(
        "clone", parents=[common], help="copy a workflow's latest version as a new draft"
    )
    clone.add_argument("source", help="workflow name or id to copy")
    clone.add_argument("new_name", metavar="NEW_NAME", help="1-50 of A-Z a-z 0-9 _ - .")
    clone.set_defaults(handler=workflow_clone)
    secret = wf.add_parser(
        "webhook-secret", parents=[common], help="print (or rotate) a workflow's webhook secret"
    )
    secret.add_argument("name", help="workflow name or id (its trigger has webhook: true)")
    secret.add_argument("--rotate", action="store_true", help="replace it with a new secret")
    secret.set_defaults(handler=workflow_webhook_secret)
    test = wf.add_parser(
        "test", parents=[common], help="dry-run a definition file without registering it"
    )
    test.add_argument("file", metavar="FILE", help="a YAML or JSON definition ('-' = stdin)")
    test.add_argument(
        "--input", metavar="JSON|@FILE", help="the trigger data: JSON, or @FILE (JSON/YAML)"
    )
    test.add_argument("--watch", action="store_true", help="follow the run until it ends")
    test.set_defaults(handler=workflow_test)

    run = groups.add_parser("run", help="start and follow runs")
    rn = run.add_subparsers(dest="command", required=True)
    start = rn.add_parser("start", parents=[common], help="start a run and print its id")
    start.add_argument("name", help="workflow name or id")
    given = start.add_mutually_exclusive_group()
    given.add_argument("--input", metavar="JSON", help="the trigger data, as JSON")
    given.add_argument("--input-file", metavar="FILE", help="the trigger data, a JSON/YAML file")
    start.add_argument(
        "--idempotency-key", metavar="KEY", help="the same key never starts a second run"
    )
    start.add_argument("--watch", action="store_true", help="follow the run until it ends")
    start.set_defaults(handler=run_start)
    show = rn.add_parser("get", parents=[common], help="show a run: tasks, data, errors")
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument("-o", "--output", choices=["table", "json"], default="table")
    show.add_argument("--watch", action="store_true", help="follow the run until it ends")
    show.add_argument("--hide-skipped", action="store_true", help="leave out skipped tasks")
    show.add_argument("--hide-warnings", action="store_true", help="leave out warnings")
    show.set_defaults(handler=run_get)
    for verb, handler in (("approve", run_approve), ("reject", run_reject)):
        decide = rn.add_parser(
            verb, parents=[common], help=f"{verb} a waiting approval task of a run"
        )
        decide.add_argument("run_id", metavar="RUN_ID")
        decide.add_argument("node_id", metavar="NODE_ID", help="the approval node's id")
        decide.add_argument("--comment", help="why (a rejection's reason fails the run)")
        decide.set_defaults(handler=handler)
    control.add_parsers(rn, common, _watch)

    tokens.add_parsers(groups, common)
    credentials.add_parsers(groups, common)
    add_history_commands(groups, rn, common)
    add_alert_commands(groups, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        config = load_config()
    except ConfigError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    if config.warning:
        _err(config.warning)
    address = rpc.server_address(getattr(args, "server", None), config=config)
    try:
        with rpc.connect(address, rpc.call_metadata(config=config)) as gateway:
            code: int = args.handler(args, gateway)
            return code
    except UsageError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except grpc.RpcError as exc:
        code, message = rpc.describe_rpc_error(exc, address)
        _err(message)
        return code
    except WatchEndedError as exc:
        _err(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `flowyard run get X | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
