"""Hostile code against the code sandbox (bubblewrap): each test tries one way out.

Real child processes, as the executor runs them; docs/threat-model.md lists what the
sandbox is meant to hold. A machine without bubblewrap fails these (scripts/bootstrap.sh
installs it), it does not skip them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flowyard_executor.sandbox import (
    MAX_LOG_LINE_CHARS,
    NPROC_HEADROOM,
    RUNNER,
    WORKDIR,
    CodeResult,
    CodeSandbox,
    Confinement,
    SandboxUnavailable,
    _access_problem,
    resolve_confinement,
)

from tests.unit.test_sandbox import (
    LIMITS,
    live_children,
    my_child_above,
    node_inputs,
    process_state,
    run,
    sandbox,
    sleeper,
    wait_for_process,
    wait_until_gone,
)

# Code that reports what it could read: {"path": "contents" | "ErrorType: message"}.
TRY_READ = textwrap.dedent(
    """
    def try_read(path):
        try:
            with open(path, 'rb') as f:
                return f.read(4096).decode('utf-8', 'replace')
        except OSError as exc:
            return f'{type(exc).__name__}: {exc.strerror}'
    """
)


def marker() -> str:
    return f"flowyard-marker-{uuid.uuid4().hex}"


def as_text(result: CodeResult) -> str:
    logs = "".join(line.text for line in result.logs)
    return json.dumps(result.output) + result.error_message + logs


@contextlib.contextmanager
def readable_dir() -> Iterator[Path]:
    """A directory anyone may read (pytest's tmp_path is private to its user)."""
    path = Path(tempfile.mkdtemp(prefix="flowyard-escape-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_the_code_cannot_see_the_executors_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = marker()
    monkeypatch.setenv("FLOWYARD_SECRET_PROBE", secret)
    source = TRY_READ + textwrap.dedent(
        """
        import os
        seen = {}
        for pid in os.listdir('/proc'):
            if pid.isdigit():
                for name in ('environ', 'cmdline'):
                    seen[f'/proc/{pid}/{name}'] = try_read(f'/proc/{pid}/{name}')
        result = {'probe': os.environ.get('FLOWYARD_SECRET_PROBE'), 'keys': sorted(os.environ),
                  'home': os.environ['HOME'], 'proc': seen}
        """
    )
    result = await run(source)
    assert result.ok, result
    assert isinstance(result.output, dict)
    assert result.output["probe"] is None
    assert result.output["keys"] == ["HOME", "LANG", "PATH", "PWD", "PYTHONDONTWRITEBYTECODE"]
    assert result.output["home"] == WORKDIR
    assert result.output["proc"]  # it did look at its own processes' environments
    assert secret not in as_text(result)


async def test_the_code_cannot_read_the_credential_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key that decrypts stored credentials lives in the executor's environment."""
    key = marker()
    monkeypatch.setenv("FLOWYARD_CREDENTIALS_KEY", key)
    source = TRY_READ + textwrap.dedent(
        """
        import os
        found = {'parent': try_read(f'/proc/{os.getppid()}/environ')}
        for top in ('/proc', '/dev', '/tmp', '/flowyard', '.'):
            for root, dirs, files in os.walk(top):
                if root.startswith(('/proc/sys', '/proc/bus', '/proc/irq')):
                    dirs.clear()
                    continue
                dirs[:] = [d for d in dirs if not (root == '/proc' and not d.isdigit()
                                                   and d not in ('self', 'thread-self'))]
                for name in files:
                    path = os.path.join(root, name)
                    if not path.startswith('/dev/') and os.path.isfile(path):
                        found[path] = try_read(path)
        hits = {path: text for path, text in found.items() if 'CREDENTIALS' in text}
        result = {'env': os.environ.get('FLOWYARD_CREDENTIALS_KEY'), 'read': len(found),
                  'hits': hits}
        """
    )
    result = await run(source)
    assert result.ok, result
    assert isinstance(result.output, dict)
    assert result.output["env"] is None
    assert result.output["hits"] == {}
    assert result.output["read"] > 20  # it did read what it could reach
    assert key not in as_text(result)


def host_top_level() -> set[str]:
    """What the sandbox's / should hold: its own mounts and the host's /bin, /lib... links."""
    links = {"bin", "sbin", "lib", "lib32", "lib64", "libx32"}
    return {"dev", "flowyard", "proc", "task", "tmp", "usr"} | {
        name for name in links if os.path.lexists(f"/{name}")
    }


def outside_paths(target: Path) -> list[str]:
    return [
        str(target),
        str(target.parent),
        "/etc/passwd",
        "/etc/hostname",
        "/root/.bash_history",
        str(RUNNER),  # the executor's own installation
        str(Path.cwd() / "pyproject.toml"),
        os.path.expanduser("~/.cache"),
        "/proc/1/root" + str(target),
    ]


def write_secret(directory: Path, secret: str) -> Path:
    target = directory / "secret.txt"
    target.write_text(secret)
    target.chmod(0o644)
    return target


async def test_the_code_cannot_read_files_outside_its_working_directory() -> None:
    secret = marker()
    expected_root = host_top_level()
    with readable_dir() as outside:
        paths = outside_paths(write_secret(outside, secret))
        source = TRY_READ + textwrap.dedent(
            f"""
            import os
            paths = {paths!r}
            read = {{path: try_read(path) for path in paths}}
            listed = {{}}
            for path in paths:
                try:
                    listed[path] = os.listdir(path)
                except OSError as exc:
                    listed[path] = type(exc).__name__
            writes = {{}}
            for path in ('/usr/x', '/x', '/dev/shm/x', '/proc/x', '/flowyard/sandbox_runner.py',
                         {str(outside / "planted")!r}):
                try:
                    with open(path, 'w') as f:
                        f.write('planted')
                    writes[path] = 'written'
                except OSError as exc:
                    writes[path] = type(exc).__name__
            result = {{'read': read, 'listed': listed, 'writes': writes,
                       'root': sorted(os.listdir('/'))}}
            """
        )
        result = await run(source)
        assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert result.ok, result
    assert isinstance(result.output, dict)
    assert secret not in as_text(result)
    for path, outcome in result.output["read"].items():
        assert outcome.startswith(("FileNotFoundError", "PermissionError")), (path, outcome)
    for path, outcome in result.output["listed"].items():
        assert outcome in ("FileNotFoundError", "PermissionError", "NotADirectoryError"), path
    assert "written" not in result.output["writes"].values()
    assert set(result.output["root"]) == expected_root


async def test_the_code_has_no_network() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract_name = f"\0flowyard-test-{uuid.uuid4().hex}"
    abstract.bind(abstract_name)
    abstract.listen()
    abstract.setblocking(False)
    # The test's own listener, and MongoDB and Kafka where the local stack runs them.
    targets = [listener.getsockname()[1], 27017, 9092, 50051]
    source = textwrap.dedent(
        f"""
        import socket
        outcomes = {{}}
        for port in {targets!r}:
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(('127.0.0.1', port))
                outcomes[port] = 'connected'
            except OSError as exc:
                outcomes[port] = type(exc).__name__
            s.close()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.sendto(b'hello', ('127.0.0.1', {udp.getsockname()[1]}))
        except OSError:
            pass
        a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            a.connect({abstract_name!r})
            outcomes['abstract'] = 'connected'
        except OSError as exc:
            outcomes['abstract'] = type(exc).__name__
        try:
            socket.getaddrinfo('example.com', 443)
            outcomes['dns'] = 'resolved'
        except OSError as exc:
            outcomes['dns'] = type(exc).__name__
        try:
            socket.create_connection(('1.1.1.1', 443), timeout=2)
            outcomes['internet'] = 'connected'
        except OSError as exc:
            outcomes['internet'] = type(exc).__name__
        result = {{'outcomes': outcomes, 'interfaces': [n for _, n in socket.if_nameindex()]}}
        """
    )
    try:
        result = await run(source)
        assert result.ok, result
        assert isinstance(result.output, dict)
        outcomes = result.output["outcomes"]
        assert "connected" not in outcomes.values(), outcomes
        assert outcomes["dns"] != "resolved"
        assert result.output["interfaces"] == ["lo"]
        with pytest.raises(BlockingIOError):
            listener.accept()
        with pytest.raises(BlockingIOError):
            udp.recvfrom(100)
        with pytest.raises(BlockingIOError):
            abstract.accept()
    finally:
        for sock in (listener, udp, abstract):
            sock.close()


async def test_the_code_cannot_see_other_processes() -> None:
    token = marker()
    # A process of the executor's machine, with a recognisable command line.
    host_process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(30)", token
    )
    try:
        source = textwrap.dedent(
            f"""
            import os
            cmdlines = {{}}
            for pid in os.listdir('/proc'):
                if pid.isdigit():
                    try:
                        cmdlines[pid] = open(f'/proc/{{pid}}/cmdline', 'rb').read().decode()
                    except OSError:
                        pass
            try:
                os.kill({os.getpid()}, 0)
                signalled = 'yes'
            except OSError as exc:
                signalled = type(exc).__name__
            result = {{'cmdlines': cmdlines, 'me': os.getpid(), 'parent': os.getppid(),
                      'signalled': signalled}}
            """
        )
        result = await run(source)
    finally:
        host_process.kill()
        await host_process.wait()
    assert result.ok, result
    assert isinstance(result.output, dict)
    assert token not in as_text(result)
    # bubblewrap's init (pid 1) and the code's own process, nothing else.
    assert sorted(result.output["cmdlines"]) == ["1", str(result.output["me"])]
    assert result.output["parent"] == 1
    assert result.output["signalled"] == "ProcessLookupError"


async def test_runs_cannot_see_each_others_files() -> None:
    secret = marker()
    writer = textwrap.dedent(
        f"""
        import os, time
        open('mine.txt', 'w').write({secret!r})
        open('/tmp/also-mine.txt', 'w').write({secret!r})
        time.sleep(1.5)
        result = sorted(os.listdir('.'))
        """
    )
    snooper = TRY_READ + textwrap.dedent(
        """
        import os, time
        time.sleep(0.5)
        found = {}
        for top in ('/task', '/tmp', '/proc'):
            for root, dirs, files in os.walk(top):
                if root == '/proc':
                    dirs[:] = [d for d in dirs if d.isdigit()]
                for name in files:
                    if name.endswith('.txt'):
                        found[os.path.join(root, name)] = try_read(os.path.join(root, name))
        result = found
        """
    )
    async with sandbox(warm=2) as box:
        mine, theirs = await asyncio.gather(
            box.run(writer, node_inputs()), box.run(snooper, node_inputs())
        )
    assert mine.ok, mine
    assert mine.output == ["also-mine.txt", "mine.txt"]
    assert theirs.ok, theirs
    assert theirs.output == {}
    assert secret not in as_text(theirs)


def host_uids(pid: int) -> set[int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {int(uid) for line in status if line.startswith("Uid:") for uid in line.split()[1:]}


async def test_the_code_runs_without_privileges() -> None:
    token = marker()
    source = sleeper(token) + textwrap.dedent(
        """
        import os, subprocess
        outcomes = {}
        try:
            os.setuid(0)
            outcomes['setuid'] = 'root'
        except OSError:
            outcomes['setuid'] = 'refused'  # EINVAL: no root in its user namespace
        status = open('/proc/self/status').read().splitlines()
        outcomes['caps'] = sorted({line.split()[1] for line in status
                                   if line.startswith(('CapEff', 'CapPrm', 'CapInh'))})
        nested = subprocess.run(['unshare', '--user', '--map-root-user', 'true'],
                                capture_output=True)
        outcomes['nested_userns'] = nested.returncode
        mount = subprocess.run(['mount', '-t', 'tmpfs', 'none', '/task'], capture_output=True)
        outcomes['mount'] = mount.returncode
        result = outcomes
        time.sleep(2)  # while the test looks at the grandchild from outside
        """
    )
    async with sandbox() as box:
        task = asyncio.create_task(box.run(source, node_inputs()))
        (grandchild,) = await wait_for_process(token)
        uids = host_uids(grandchild)
        result = await task
    expected_uid = 65534 if os.geteuid() == 0 else os.geteuid()
    assert uids == {expected_uid}  # real, effective, saved and file-system uid, as seen here
    assert result.ok, result
    assert result.output == {
        "setuid": "refused",
        "caps": ["0000000000000000"],
        "nested_userns": 1,
        "mount": 32,  # mount(8): "mount failure"
    }


async def test_a_fork_bomb_is_contained_and_the_sandbox_keeps_serving() -> None:
    bomb = "import os\nwhile True:\n    os.fork()"
    async with sandbox(warm=1) as box:
        task = asyncio.create_task(box.run(bomb, node_inputs(), 10.0))
        peak = 0
        while not task.done():
            children = live_children()
            tree = {pid for pid in _all_pids() if _descends_from(pid, children)}
            peak = max(peak, len(tree))
            await asyncio.sleep(0.01)
        result = task.result()
        after = await box.run("result = 'still here'", node_inputs())
    assert result.error_code == "code.exception"
    assert "BlockingIOError" in result.error_message  # fork() refused: the process limit
    # Every child of the pool, with all its processes: bwrap outside and inside, and the
    # code's processes (at most NPROC_HEADROOM more than the sandbox had at start-up).
    assert peak <= 2 * 3 + NPROC_HEADROOM + 4
    assert after.output == "still here"


def _all_pids() -> set[int]:
    return {int(entry) for entry in os.listdir("/proc") if entry.isdigit()}


def _descends_from(pid: int, ancestors: set[int]) -> bool:
    try:
        return my_child_above(pid) in ancestors
    except (OSError, AssertionError, ValueError):
        return False


async def test_filling_the_disk_stops_at_the_working_directorys_size() -> None:
    limits = replace(LIMITS, disk_bytes=4 * 1024 * 1024)
    source = "i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * 1024 * 1024)\n    i += 1"
    before = shutil.disk_usage(tempfile.gettempdir()).used
    result = await run(source, limits=limits)
    assert result.error_code == "code.exception"
    assert "No space left on device" in result.error_message
    # Nothing of it reached the executor's disk (a little slack for other processes).
    assert shutil.disk_usage(tempfile.gettempdir()).used - before < 3 * 1024 * 1024


async def test_a_log_flood_is_cut_and_the_result_still_arrives() -> None:
    source = textwrap.dedent(
        """
        import os
        os.write(1, b'x' * 20_000_000)  # one huge line, straight to the descriptor
        os.write(2, b'\\n')
        print('y' * 5_000_000)
        for i in range(200_000):
            print(i)
        result = 'done'
        """
    )
    started = time.monotonic()
    result = await run(source)
    assert time.monotonic() - started < 30
    assert result.ok, result
    assert result.output == "done"
    assert len(result.logs) == LIMITS.max_log_lines + 1
    assert all(len(line.text) < MAX_LOG_LINE_CHARS + 100 for line in result.logs)
    assert "more log lines were dropped" in result.logs[-1].text


async def test_the_sandbox_dies_with_the_executor() -> None:
    """--die-with-parent: an executor killed with SIGKILL leaves no code running."""
    token = marker()
    program = textwrap.dedent(
        f"""
        import asyncio
        from flowyard_executor.sandbox import CodeSandbox, SandboxLimits
        async def main():
            async with CodeSandbox(SandboxLimits(), warm_processes=1) as box:
                await box.run({sleeper(token) + "while True: pass"!r}, {{}}, 60.0)
        asyncio.run(main())
        """
    )
    executor = await asyncio.create_subprocess_exec(sys.executable, "-c", program)
    try:
        grandchildren = await wait_for_process(token, within=15.0)
        executor.send_signal(signal.SIGKILL)
        await executor.wait()
        await wait_until_gone(grandchildren)
    finally:
        if executor.returncode is None:
            executor.kill()
            await executor.wait()
    for pid in grandchildren:
        assert process_state(pid) in (None, "Z")


# --- where the sandbox cannot be had --------------------------------------------------


def test_an_unknown_sandbox_kind_is_refused() -> None:
    with pytest.raises(SandboxUnavailable, match="unknown code sandbox 'chroot'"):
        resolve_confinement("chroot")


def test_without_bwrap_the_error_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(SandboxUnavailable) as raised:
        resolve_confinement("bwrap")
    assert "apt-get install bubblewrap" in str(raised.value)
    assert "FLOWYARD_CODE_SANDBOX=none" in str(raised.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="only an executor running as root switches user")
def test_as_root_the_sandbox_never_runs_code_as_root() -> None:
    with pytest.raises(SandboxUnavailable, match="must not be root"):
        resolve_confinement("bwrap", sandbox_uid=0)
    confinement = resolve_confinement("bwrap")
    assert confinement.user is not None
    assert confinement.user[0] == 65534


def test_an_interpreter_the_sandbox_user_cannot_reach_is_named() -> None:
    with readable_dir() as base:
        private = base / "private"
        private.mkdir(mode=0o700)
        python = private / "python3"
        python.write_text("")
        python.chmod(0o755)
        assert _access_problem(str(python), 65534, frozenset({65534}), 5) == (
            f"{private} is not searchable"
        )
        private.chmod(0o755)
        assert _access_problem(str(python), 65534, frozenset({65534}), 5) == ""
        python.chmod(0o700)
        assert _access_problem(str(python), 65534, frozenset({65534}), 5) == (
            f"{python} is not readable"
        )


async def test_a_sandbox_that_cannot_start_fails_on_entry_with_the_reason() -> None:
    working = resolve_confinement("bwrap")
    broken = Confinement(
        kind="bwrap",
        python="/usr/bin/no-such-python",
        python_prefix="/usr",
        bwrap=working.bwrap,
        user=working.user,
        setpriv=working.setpriv,
    )
    with pytest.raises(SandboxUnavailable) as raised:
        async with CodeSandbox(LIMITS, warm_processes=1, confinement=broken):
            pass
    assert "no-such-python" in str(raised.value)
