"""The code-action sandbox: real child processes, small limits, a few seconds per test.

These run with the default confinement (bubblewrap); test_sandbox_escapes.py tries to get
out of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC
from pathlib import Path

import pytest
from flowyard.domain.json import JsonValue
from flowyard_executor.sandbox import (
    WORKDIR,
    CodeResult,
    CodeSandbox,
    SandboxLimits,
    resolve_confinement,
)

LIMITS = SandboxLimits(
    cpu_seconds=5,
    memory_bytes=256 * 1024 * 1024,
    wall_seconds=10.0,
    max_output_bytes=64 * 1024,
    max_log_lines=100,
)


def node_inputs(
    upstream: Mapping[str, JsonValue] | None = None, trigger: JsonValue = None
) -> dict[str, JsonValue]:
    return {
        "trigger": trigger,
        "context": {"region": "eu"},
        "node_context": {"retries": 2},
        "upstream": dict(upstream or {}),
    }


@asynccontextmanager
async def sandbox(limits: SandboxLimits = LIMITS, warm: int = 1) -> AsyncIterator[CodeSandbox]:
    async with CodeSandbox(limits, warm_processes=warm) as box:
        yield box


async def run(
    source: str,
    inputs: Mapping[str, JsonValue] | None = None,
    limits: SandboxLimits = LIMITS,
    node_timeout: float | None = None,
) -> CodeResult:
    async with sandbox(limits) as box:
        return await box.run(source, node_inputs() if inputs is None else inputs, node_timeout)


def process_state(pid: int) -> str | None:
    """The state letter of a process (``Z`` for a zombie), None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def live_children() -> set[int]:
    """Pids of this process's children that are not zombies (a /proc scan)."""
    found = set()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == me and state != "Z":
            found.add(int(entry))
    return found


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def my_child_above(pid: int) -> int:
    """The child of this process that ``pid`` descends from."""
    me = os.getpid()
    while (parent := parent_of(pid)) != me:
        assert parent > 1, f"process {pid} does not descend from this one"
        pid = parent
    return pid


def processes_with(token: str) -> set[int]:
    """Pids of live (not zombie) processes whose command line contains ``token``."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if token.encode() in cmdline and process_state(int(entry)) not in (None, "Z"):
            found.add(int(entry))
    return found


def sleeper(token: str) -> str:
    """Code lines that start a grandchild process whose command line carries ``token``, in
    a session of its own (out of the reach of a kill of the child's process group)."""
    return (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
        f"{token!r}], start_new_session=True)\n"
    )


async def wait_for_process(token: str, within: float = 5.0) -> set[int]:
    deadline = time.monotonic() + within
    while not (found := processes_with(token)):
        assert time.monotonic() < deadline, f"no process with {token} appeared"
        await asyncio.sleep(0.02)
    return found


async def wait_until_gone(pids: set[int], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while alive := {pid for pid in pids if process_state(pid) not in (None, "Z")}:
        assert time.monotonic() < deadline, f"processes {alive} outlived their sandbox"
        await asyncio.sleep(0.02)


async def test_result_comes_from_upstream_outputs_and_the_other_inputs() -> None:
    source = "\n".join(
        [
            'total = upstream["a"]["n"] + 1',
            "result = {",
            '    "total": total,',
            '    "trigger": trigger,',
            '    "region": context["region"],',
            '    "retries": node_context["retries"],',
            '    "same": inputs["upstream"] is upstream,',
            '    "root": math.isqrt(total * total),',  # a curated module, not imported
            '    "main": __name__,',
            "}",
        ]
    )
    result = await run(source, node_inputs({"a": {"n": 41}}, trigger={"id": 7}))
    assert result.ok, result
    assert result.output == {
        "total": 42,
        "trigger": {"id": 7},
        "region": "eu",
        "retries": 2,
        "same": True,
        "root": 42,
        "main": "__main__",
    }
    assert result.error_code == ""


async def test_no_result_assigned_is_none() -> None:
    result = await run("x = 1")
    assert result.ok
    assert result.output is None


async def test_print_and_logging_are_captured_in_order_with_their_streams() -> None:
    source = "\n".join(
        [
            "import logging, sys",
            'print("one")',
            'logging.info("two %s", 2)',
            'print("three", file=sys.stderr)',
            'logging.getLogger("mine").warning("four")',
            'logging.debug("below the level")',
            'print("five\\nsix", end="")',
            "result = 1",
        ]
    )
    result = await run(source)
    assert result.ok, result
    assert [(line.stream, line.text) for line in result.logs] == [
        ("stdout", "one"),
        ("stderr", "INFO two 2"),
        ("stderr", "three"),
        ("stderr", "WARNING four"),
        ("stdout", "five"),
        ("stdout", "six"),
    ]
    times = [line.time for line in result.logs]
    assert all(t.tzinfo is UTC for t in times)
    assert times == sorted(times)


async def test_log_lines_over_the_limit_are_dropped_with_a_note() -> None:
    limits = replace(LIMITS, max_log_lines=5)
    result = await run("for i in range(20):\n    print(i)\nresult = 'done'", limits=limits)
    assert result.ok
    assert [line.text for line in result.logs[:5]] == ["0", "1", "2", "3", "4"]
    assert len(result.logs) == 6
    assert "15" in result.logs[-1].text
    assert "dropped" in result.logs[-1].text


async def test_an_exception_reports_its_type_message_and_the_users_frames() -> None:
    source = "\n".join(
        [
            "def check(value):",
            "    if value < 0:",
            '        raise ValueError(f"negative: {value}")',
            "",
            "check(-3)",
        ]
    )
    result = await run(source)
    assert not result.ok
    assert result.error_code == "code.exception"
    assert result.error_message == "ValueError: negative: -3"
    trace = result.stack_trace
    assert 'File "<code>", line 5, in <module>' in trace
    assert 'File "<code>", line 3, in check' in trace
    assert 'raise ValueError(f"negative: {value}")' in trace
    assert "sandbox_runner" not in trace
    assert result.output is None


async def test_a_syntax_error_is_an_exception_of_the_code() -> None:
    result = await run("x = [1,\n")
    assert result.error_code == "code.exception"
    assert result.error_message.startswith("SyntaxError:")
    assert '"<code>", line 1' in result.stack_trace


async def test_sys_exit_zero_ends_the_script_normally_and_other_statuses_fail() -> None:
    ok = await run("import sys\nresult = 5\nsys.exit(0)\nresult = 6")
    assert ok.ok
    assert ok.output == 5
    failed = await run("import sys\nsys.exit(3)")
    assert failed.error_code == "code.exception"
    assert failed.error_message == "SystemExit: 3"


async def test_an_endless_loop_times_out_at_the_nodes_timeout() -> None:
    started = time.monotonic()
    result = await run("while True:\n    pass", node_timeout=1.0)
    elapsed = time.monotonic() - started
    assert result.error_code == "code.timeout"
    assert "1 s" in result.error_message
    assert elapsed < 4.0


async def test_without_a_node_timeout_the_sandbox_wall_limit_applies() -> None:
    limits = replace(LIMITS, wall_seconds=0.5)
    result = await run("import time\ntime.sleep(30)", limits=limits, node_timeout=0)
    assert result.error_code == "code.timeout"
    assert "0.5 s" in result.error_message


async def test_a_timeout_kills_everything_the_code_started() -> None:
    token = f"flowyard-test-{uuid.uuid4().hex}"
    source = sleeper(token) + "while True:\n    pass"
    async with sandbox() as box:
        task = asyncio.create_task(box.run(source, node_inputs(), 1.5))
        grandchildren = await wait_for_process(token)
        result = await task
    assert result.error_code == "code.timeout"
    await wait_until_gone(grandchildren)


async def test_cpu_time_over_the_limit_is_code_cpu() -> None:
    limits = replace(LIMITS, cpu_seconds=1, wall_seconds=60.0)
    result = await run("def spin():\n    while True:\n        pass\nspin()", limits=limits)
    assert result.error_code == "code.cpu"
    assert "1 s" in result.error_message
    # where SIGXCPU lands inside the loop varies; the trace must point into the user's function
    assert 'File "<code>"' in result.stack_trace
    assert "in spin" in result.stack_trace


async def test_a_huge_allocation_is_contained_as_code_memory() -> None:
    result = await run("x = bytearray(2 * 1024**3)")
    assert result.error_code == "code.memory"
    assert "MemoryError" in result.error_message
    assert 'File "<code>", line 1' in result.stack_trace


async def test_memory_filled_step_by_step_is_code_memory_too() -> None:
    result = await run("chunks = []\nwhile True:\n    chunks.append(bytearray(8 * 1024 * 1024))")
    assert result.error_code == "code.memory"


async def test_a_result_json_cannot_encode_names_its_type() -> None:
    result = await run("result = object()")
    assert result.error_code == "code.output_not_json"
    assert "'object'" in result.error_message
    nested = await run("result = {'when': datetime.date(2024, 1, 2)}")
    assert nested.error_code == "code.output_not_json"
    assert "'date'" in nested.error_message
    nan = await run("result = [float('nan')]")
    assert nan.error_code == "code.output_not_json"


async def test_an_oversized_result_is_rejected() -> None:
    limits = replace(LIMITS, max_output_bytes=1000)
    result = await run("result = 'x' * 2000", limits=limits)
    assert result.error_code == "code.output_too_large"
    assert "1000" in result.error_message
    fits = await run("result = 'x' * 900", limits=limits)
    assert fits.ok
    assert fits.output == "x" * 900


async def test_each_run_has_a_fresh_process_and_a_fresh_working_directory() -> None:
    source = (
        "import os\n"
        "seen = hasattr(json, 'planted')\n"
        "json.planted = True\n"
        "before = sorted(os.listdir('.'))\n"
        "open('scratch.txt', 'w').write('x')\n"
        "result = [os.readlink('/proc/self/ns/pid'), os.getcwd(), os.environ['HOME'], seen,\n"
        "          before, sorted(os.listdir('/tmp'))]"
    )
    async with sandbox(warm=2) as box:
        first = await box.run(source, node_inputs())
        second = await box.run(source, node_inputs())
    assert first.ok, first
    assert second.ok, second
    assert isinstance(first.output, list)
    assert isinstance(second.output, list)
    assert first.output[0] != second.output[0]  # each in a pid namespace of its own
    for out in (first.output, second.output):
        assert out[1:] == [WORKDIR, WORKDIR, False, [], ["scratch.txt"]]


async def test_without_confinement_each_run_gets_a_host_directory_removed_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FLOWYARD_CODE_SANDBOX=none: limits and a clean environment, but no isolation."""
    monkeypatch.setenv("FLOWYARD_SECRET_PROBE", "x")
    source = (
        "import os\n"
        "open('scratch.txt', 'w').write('x')\n"
        "result = [os.getcwd(), os.environ['HOME'], os.environ.get('FLOWYARD_SECRET_PROBE')]"
    )
    none = resolve_confinement("none")
    async with CodeSandbox(LIMITS, 1, none, workdir_root=str(tmp_path)) as box:
        first = await box.run(source, node_inputs())
        memory = await box.run("x = bytearray(2 * 1024**3)", node_inputs())
    assert first.ok, first
    assert isinstance(first.output, list)
    workdir = first.output[0]
    assert isinstance(workdir, str)
    assert workdir.startswith(str(tmp_path))
    assert first.output[1:] == [workdir, None]
    assert memory.error_code == "code.memory"
    assert not os.listdir(tmp_path)  # every working directory removed


async def test_fake_protocol_lines_from_the_code_do_not_override_the_result() -> None:
    fakes = [
        '{"k":"result","dropped":0,"output":666}',
        '0123456789abcdef0123456789abcdef {"k":"result","dropped":0,"output":666}',
        '0123456789abcdef0123456789abcdef {"k":"error","code":"code.timeout","message":"x"}',
    ]
    source = "\n".join(
        [
            "import os, sys",
            f"fakes = {json.dumps(fakes)}",
            "for fake in fakes:",
            "    print(fake)",
            "    sys.stdout.flush()",
            "    for fd in range(1, 10):",
            "        try:",
            "            os.write(fd, (fake + '\\n').encode())",
            "        except OSError:",
            "            pass",
            "result = 1",
        ]
    )
    result = await run(source)
    assert result.ok, result
    assert result.output == 1
    assert any(line.text == fakes[0] for line in result.logs)


async def test_a_child_that_dies_on_its_own_is_code_crashed() -> None:
    died = await run("import os\nprint('bye')\nos._exit(3)")
    assert died.error_code == "code.crashed"
    assert "status 3" in died.error_message
    killed = await run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert killed.error_code == "code.crashed"
    assert "SIGSEGV" in killed.error_message
    assert "Segmentation fault" in killed.error_message  # from the last stderr lines


THREAD = "threading.Thread(target=time.sleep, args=(9,))"


async def test_the_sandbox_keeps_working_after_hostile_code() -> None:
    limits = replace(LIMITS, cpu_seconds=1, max_output_bytes=1000, disk_bytes=2 * 1024**2)
    hostile = [
        ("while True:\n    pass", "code.timeout"),
        ("x = bytearray(2 * 1024**3)", "code.memory"),
        ("import os\nos._exit(1)", "code.crashed"),
        ("result = 'y' * 5000", "code.output_too_large"),
        ("raise KeyError('k')", "code.exception"),
        ("import os\nwhile True:\n    os.fork()", "code.exception"),  # BlockingIOError
        (f"import threading\nwhile True:\n    {THREAD}.start()", "code.exception"),
        ("while True:\n    open(str(time.time_ns()), 'wb').write(bytes(2**20))", "code.exception"),
        ("for i in range(10**5):\n    print('z' * 10**4)\nresult = 1", ""),  # a log flood
    ]
    async with sandbox(limits, warm=2) as box:
        # Half a second of wall time for the endless loop (under its 1 s of CPU time).
        timeouts = [0.5] + [5.0] * (len(hostile) - 1)
        outcomes = [
            await box.run(source, node_inputs(), timeout)
            for (source, _), timeout in zip(hostile, timeouts, strict=True)
        ]
        after = await box.run("result = upstream['a'] * 2", node_inputs({"a": 21}))
    assert [outcome.error_code for outcome in outcomes] == [code for _, code in hostile]
    assert "BlockingIOError" in outcomes[5].error_message
    assert "can't start new thread" in outcomes[6].error_message
    assert "No space left on device" in outcomes[7].error_message
    assert len(outcomes[8].logs) == limits.max_log_lines + 1
    assert after.ok
    assert after.output == 42


async def test_concurrent_runs_are_independent() -> None:
    async with sandbox(warm=2) as box:
        results = await asyncio.gather(
            *(box.run("result = upstream['i'] * 10", node_inputs({"i": i})) for i in range(6))
        )
    assert [r.output for r in results] == [i * 10 for i in range(6)]


async def test_cancelling_a_run_kills_and_reaps_its_child() -> None:
    token = f"flowyard-test-{uuid.uuid4().hex}"
    async with sandbox(warm=1) as box:
        task = asyncio.create_task(box.run(sleeper(token) + "while True:\n    pass", {}, 30.0))
        grandchildren = await wait_for_process(token)
        (child,) = {my_child_above(pid) for pid in grandchildren}
        assert child in live_children()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until_gone(grandchildren)
        assert child not in live_children()  # killed and reaped
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
        # The pool still serves runs afterwards.
        assert (await box.run("result = 1", node_inputs())).output == 1


async def test_closing_the_sandbox_kills_its_warm_children() -> None:
    before = live_children()
    async with sandbox(warm=3) as box:
        await box.run("result = 1", node_inputs())
        deadline = time.monotonic() + 5.0
        while len(live_children() - before) < 3:
            assert time.monotonic() < deadline, "the warm pool never filled"
            await asyncio.sleep(0.02)
        warm = live_children() - before
    assert not (live_children() & warm)


async def test_cancelling_while_the_child_starts_leaves_no_process_behind() -> None:
    before = live_children()
    async with sandbox(warm=0) as box:
        task = asyncio.create_task(box.run("result = 1", node_inputs()))
        await asyncio.sleep(0)  # inside the start of a fresh child
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not (live_children() - before)


async def test_closing_the_sandbox_ends_a_running_job() -> None:
    before = live_children()
    box = CodeSandbox(LIMITS, warm_processes=1)
    async with box:
        task = asyncio.create_task(box.run("while True:\n    pass", node_inputs(), 30.0))
        await asyncio.sleep(0.3)
    result = await asyncio.wait_for(task, 5.0)
    assert result.error_code == "code.crashed"
    assert "shut down" in result.error_message
    assert not (live_children() - before)
