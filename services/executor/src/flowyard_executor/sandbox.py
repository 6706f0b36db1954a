"""The code-action sandbox: runs the Python source of a code node in a child process.

What the user's code sees
-------------------------
The source runs as a script (``__name__ == "__main__"``), in its own brand-new process,
with these names already defined:

``trigger``
    the trigger's data;
``context``
    the workflow's context dict;
``node_context``
    the node's context dict;
``upstream``
    a dict from each upstream node's id to that node's output;
``inputs``
    the whole input dict, with the keys ``trigger``, ``context``, ``node_context`` and
    ``upstream`` (a missing ``trigger`` is ``None``, a missing dict is ``{}``);

plus Python's normal built-ins and the modules in :data:`CURATED_MODULES`, already
imported under their own names. Any other standard-library module can be imported as
usual; third-party packages are not available (the child runs with ``-I -S``).

The node's output is whatever the script assigns to the global ``result`` (``None`` if
it never does). It must be JSON (dicts with string keys, lists, tuples, strings,
numbers, booleans, ``None``; no NaN or infinity) and at most
:attr:`SandboxLimits.max_output_bytes` once encoded.

``print`` (to stdout or stderr) and the ``logging`` module (the root logger writes to
stderr at level INFO with the format ``"%(levelname)s %(message)s"``) are captured line
by line with the time each line was completed, as :class:`LogLine` s in the streams
``"stdout"`` and ``"stderr"``. Lines longer than :data:`MAX_LOG_LINE_CHARS` are cut;
lines beyond :attr:`SandboxLimits.max_log_lines` are dropped and one final line says how
many. Whatever reaches the process's file descriptors 1 or 2 directly (``os.write``,
C libraries, interpreter crashes) is captured as ``"stderr"`` lines too.

``sys.exit()`` / ``sys.exit(0)`` ends the script normally; any other exit status is an
error. The script ends when its last statement finishes; threads it started are not
waited for.

Outcomes (:attr:`CodeResult.error_code`)
----------------------------------------
``code.exception``
    the code raised (or had a syntax error): ``error_message`` is ``"ExcType:
    message"`` and ``stack_trace`` the traceback with only the frames of the user's
    code, whose file name is ``<code>``;
``code.timeout``
    the code ran past its wall-clock limit (the node's timeout when it has one, else
    :attr:`SandboxLimits.wall_seconds`); its whole process group was killed;
``code.memory``
    the code hit the address-space limit (a ``MemoryError``);
``code.cpu``
    the code used more CPU time than :attr:`SandboxLimits.cpu_seconds`; ``stack_trace``
    shows where it was;
``code.output_not_json`` / ``code.output_too_large``
    ``result`` cannot be encoded as JSON (the message names the type) or is too big;
``code.crashed``
    the process died without reporting an outcome (a signal, an exit status, a broken
    interpreter); the message carries the status and the last stderr lines.

Isolation
---------
Each task gets a fresh child process (``python -I -S -B``) in its own session and process
group, with a clean environment (``PATH``, ``LANG``, ``HOME`` = the working directory,
``PYTHONDONTWRITEBYTECODE``; never the executor's own variables). Before it reads its job
the child limits itself: CPU time, address space, file size (:data:`FILE_SIZE_LIMIT`), no
core dumps and, unless it runs as root, the number of processes and threads of its user (a
few more than exist at start-up, :data:`NPROC_HEADROOM`). A few children are started ahead
of time (the warm pool) so a task does not pay for start-up; each runs exactly one job and
exits.

With the ``bwrap`` confinement (the default, :func:`resolve_confinement`) each child is
started through bubblewrap in new user, pid, network, IPC, UTS and cgroup namespaces:

- the file system is a read-only view of ``/usr`` (and the Python installation when it
  lives elsewhere), a fresh ``/proc`` of its own pid namespace and a minimal read-only
  ``/dev`` (``null``, ``zero``, ``random``, ``urandom``, ...); the only writable place is
  the working directory :data:`WORKDIR` (a tmpfs of :attr:`SandboxLimits.disk_bytes`,
  also reachable as ``/tmp``), gone with the process;
- the network namespace has only a loopback interface of its own: no connection leaves it
  (code nodes have no network; HTTP calls belong in ``http`` nodes);
- the code sees only its own processes, runs without capabilities, cannot create further
  user namespaces and, when the executor runs as root, runs as an unprivileged user
  (:attr:`Confinement.user`);
- ``--die-with-parent``: the whole sandbox dies with the executor.

With ``none`` the child runs as the executor's user with its file-system and network
access, in a fresh temporary directory: the limits contain mistakes, but this is no
boundary against hostile code (for trusted authors, or machines without user namespaces).
docs/threat-model.md says what each protects and what it does not.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from flowyard.domain.json import JsonValue

log = logging.getLogger(__name__)

CURATED_MODULES: tuple[str, ...] = (
    "json",
    "math",
    "re",
    "datetime",
    "statistics",
    "random",
    "decimal",
    "collections",
    "itertools",
    "functools",
    "hashlib",
    "base64",
    "uuid",
    "time",
)
"""Modules imported into every code node's namespace under their own names."""

MAX_LOG_LINE_CHARS = 2000
"""Longer log lines are cut to this many characters (and say how many were cut)."""

FILE_SIZE_LIMIT = 10 * 1024 * 1024
"""RLIMIT_FSIZE of a code node's process: the largest file it may write."""

NPROC_HEADROOM = 16
"""RLIMIT_NPROC of a code node's process: this many more processes and threads than its
user runs at start-up. In a ``bwrap`` sandbox that user is counted in the sandbox's own user
namespace (the kernel counts per namespace), so the limit is the task's alone."""

RUNNER = Path(__file__).with_name("sandbox_runner.py")
_RUNNER_PATH = str(RUNNER)

WORKDIR = "/task"
"""The code's working directory (and ``HOME``) inside a ``bwrap`` sandbox."""

SANDBOX_RUNNER = "/flowyard/sandbox_runner.py"
"""Where the runner script is placed (read-only) inside a ``bwrap`` sandbox."""

SANDBOX_HOSTNAME = "flowyard-code"

DEFAULT_SANDBOX_UID = 65534
"""The user code runs as when the executor runs as root (``nobody`` on Debian)."""

SYSTEM_PYTHON = "/usr/bin/python3"
MIN_PYTHON = (3, 11)

_CHUNK = 64 * 1024
_RAW_LINE_BYTES = MAX_LOG_LINE_CHARS * 4
_PROTOCOL_OVERHEAD_BYTES = 1024 * 1024  # room for the error message, trace and framing
_STDERR_TAIL_LINES = 20
_CRASH_TAIL_LINES = 10
_SETTLE_SECONDS = 2.0  # after the kill: how long to wait for the pipes and the exit status
_REAP_SECONDS = 10.0


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 30  # RLIMIT_CPU
    memory_bytes: int = 512 * 1024 * 1024  # RLIMIT_AS
    wall_seconds: float = 60.0  # overridden per task by the node's timeout when > 0
    max_output_bytes: int = 1024 * 1024  # JSON-encoded result size limit
    max_log_lines: int = 10_000
    disk_bytes: int = 64 * 1024 * 1024  # the working directory's tmpfs (bwrap only)


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot confine code on this machine; the message says why and what to do."""


@dataclass(frozen=True)
class Confinement:
    """How each code node's process is confined; made by :func:`resolve_confinement`.

    ``kind`` is ``"bwrap"`` (namespaces and a read-only view, see the module's docs) or
    ``"none"`` (resource limits only). ``python`` is the interpreter the children run
    (for ``bwrap`` the real file inside ``python_prefix``, its installation, which is
    bound read-only unless it is under ``/usr``). ``user`` is the ``(uid, gid)`` the
    sandbox is started as, when the executor runs as root (through ``setpriv``, so that
    the executor still starts its children with ``vfork``: a plain ``fork`` of a process
    with threads, as Python does for ``Popen(user=...)``, can crash the child before it
    runs anything); ``None`` keeps the executor's.
    """

    kind: str
    python: str
    python_prefix: str = ""
    bwrap: str = ""
    user: tuple[int, int] | None = None
    setpriv: str = ""
    disable_userns: bool = True

    def describe(self) -> str:
        if self.kind != "bwrap":
            return f"none (resource limits only, no isolation), python {self.python}"
        who = f"uid {self.user[0]}" if self.user else f"uid {os.geteuid()}"
        return f"bwrap ({self.bwrap}), python {self.python}, {who}, no network"


def _access_problem(path: str, uid: int, gids: frozenset[int], final_mode: int) -> str:
    """Why ``uid`` (with groups ``gids``) cannot reach ``path``, or "" when it can.

    Checks the permission bits of every directory on the way (search) and of ``path``
    itself (``final_mode``: a mask of 4 = read, 1 = execute); ACLs are not considered.
    """

    def allowed(st: os.stat_result, want: int) -> bool:
        if uid == 0:
            return True
        if st.st_uid == uid:
            bits = st.st_mode >> 6
        elif st.st_gid in gids:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return bits & want == want

    parts = Path(path).parts
    current = Path(parts[0])
    for part in parts[1:]:
        try:
            st = current.stat()
        except OSError as exc:
            return f"{current}: {exc.strerror}"
        if not allowed(st, 1):
            return f"{current} is not searchable"
        current = current / part
    try:
        st = current.stat()
    except OSError as exc:
        return f"{current}: {exc.strerror}"
    if not allowed(st, final_mode):
        return f"{current} is not {'readable' if final_mode & 4 else 'executable'}"
    return ""


def _interpreter_facts(python: str) -> tuple[str, tuple[int, int]]:
    """The installation prefix and version of ``python``."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return sys.base_prefix, (sys.version_info.major, sys.version_info.minor)
    probe = "import sys; print(sys.base_prefix); print(*sys.version_info[:2])"
    try:
        done = subprocess.run(
            [python, "-I", "-S", "-c", probe],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
        prefix, version = done.stdout.splitlines()[:2]
        major, minor = (int(part) for part in version.split())
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"cannot run the interpreter {python}: {exc}") from None
    return prefix, (major, minor)


def _bwrap_supports(bwrap: str, option: str) -> bool:
    try:
        done = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return option in done.stdout + done.stderr


def resolve_confinement(
    kind: str = "bwrap", python: str = "", sandbox_uid: int = DEFAULT_SANDBOX_UID
) -> Confinement:
    """Work out how to confine code nodes here, or raise :class:`SandboxUnavailable`.

    ``python`` empty picks the executor's own interpreter when the sandbox user can reach
    it (its installation is bound read-only into the sandbox), else ``/usr/bin/python3``.
    Blocking (it may start an interpreter once): call it at start-up, off the event loop.
    """
    kind = kind.strip().lower() or "bwrap"
    if kind == "none":
        return Confinement(kind="none", python=python or sys.executable)
    if kind != "bwrap":
        raise SandboxUnavailable(f"unknown code sandbox {kind!r}: use 'bwrap' or 'none'")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install bubblewrap; "
            "scripts/bootstrap.sh installs it); FLOWYARD_CODE_SANDBOX=none runs code nodes "
            "without isolation, for trusted authors only"
        )
    user: tuple[int, int] | None = None
    setpriv = ""
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv") or ""
        if not setpriv:
            raise SandboxUnavailable(
                "setpriv (util-linux) is missing: an executor running as root needs it to "
                "start code nodes as an unprivileged user"
            )
        if sandbox_uid <= 0:
            raise SandboxUnavailable(
                "the code sandbox user (FLOWYARD_CODE_SANDBOX_UID) must not be root"
            )
        try:
            gid = pwd.getpwuid(sandbox_uid).pw_gid
        except KeyError:
            gid = sandbox_uid
        user = (sandbox_uid, gid)
        uid, gids = sandbox_uid, frozenset({gid})
    else:
        uid, gids = os.geteuid(), frozenset({os.getegid(), *os.getgroups()})
    problems: list[str] = []
    for candidate in [python] if python else [sys.executable, SYSTEM_PYTHON]:
        real = os.path.realpath(candidate)
        if not os.path.isfile(real):
            problems.append(f"{candidate}: no such interpreter")
            continue
        prefix, version = _interpreter_facts(real)
        prefix = os.path.realpath(prefix)
        if version < MIN_PYTHON:
            problems.append(f"{real} is Python {version[0]}.{version[1]}, older than 3.11")
            continue
        if not (real.startswith(prefix + os.sep) or real.startswith("/usr/")):
            problems.append(f"{real} lies outside its installation {prefix}")
            continue
        problem = _access_problem(real, uid, gids, 5) or _access_problem(prefix, uid, gids, 5)
        if problem:
            problems.append(f"{real}: {problem} for uid {uid}")
            continue
        return Confinement(
            kind="bwrap",
            python=real,
            python_prefix=prefix,
            bwrap=bwrap,
            user=user,
            setpriv=setpriv,
            disable_userns=_bwrap_supports(bwrap, "--disable-userns"),
        )
    raise SandboxUnavailable(
        "no Python interpreter the code sandbox can run ("
        + "; ".join(problems)
        + "): set FLOWYARD_CODE_SANDBOX_PYTHON to one its user can read"
    )


def _root_links() -> list[str]:
    """bwrap arguments recreating the host's top-level /bin, /lib... (links into /usr on
    merged-/usr systems, read-only binds otherwise)."""
    args: list[str] = []
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    return args


@dataclass(frozen=True)
class LogLine:
    time: datetime  # UTC, when the line was printed
    stream: str  # "stdout" | "stderr"
    text: str


@dataclass(frozen=True)
class CodeResult:
    ok: bool
    output: JsonValue
    error_code: str = ""
    error_message: str = ""
    stack_trace: str = ""
    logs: tuple[LogLine, ...] = ()


_ERROR_CODES = frozenset(
    {
        "code.exception",
        "code.timeout",
        "code.memory",
        "code.cpu",
        "code.output_not_json",
        "code.output_too_large",
        "code.crashed",
    }
)


def _now() -> datetime:
    return datetime.now(UTC)


def _clip(text: str) -> str:
    if len(text) <= MAX_LOG_LINE_CHARS:
        return text
    return f"{text[:MAX_LOG_LINE_CHARS]} ... [{len(text) - MAX_LOG_LINE_CHARS} more characters]"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _kill_group(process: asyncio.subprocess.Process, *, after_exit: bool = False) -> None:
    """SIGKILL the child's whole process group (the child leads its own session).

    Once the child has been reaped its id is only reserved while something else in its
    group lives, so by default a reaped child's group is left alone; ``after_exit`` is for
    the one kill right after the job ends, which must also reach what the code started.
    """
    if process.returncode is not None and not after_exit:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _remove_tree(path: str) -> None:
    """Remove a working directory, even one whose code took its own permissions away."""
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            child = os.path.join(root, name)
            if not os.path.islink(child):
                with contextlib.suppress(OSError):
                    os.chmod(child, 0o700)
    shutil.rmtree(path, ignore_errors=True)


async def _read_lines(
    stream: asyncio.StreamReader | None,
    max_line_bytes: int,
    on_line: Callable[[bytes, bool], bool],
) -> None:
    """Feed ``stream`` to ``on_line(line, cut)`` line by line, holding at most
    ``max_line_bytes`` of a line (``cut`` says the rest was discarded). Returns at EOF or
    as soon as ``on_line`` returns True."""
    if stream is None:
        return
    line = bytearray()
    cut = False
    while True:
        chunk = await stream.read(_CHUNK)
        if not chunk:
            if line or cut:
                on_line(bytes(line), cut)
            return
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            end = len(chunk) if newline < 0 else newline
            if not cut:
                room = max_line_bytes - len(line)
                if end - start > room:
                    line += chunk[start : start + room]
                    cut = True
                else:
                    line += chunk[start:end]
            if newline < 0:
                break
            done = on_line(bytes(line), cut)
            line.clear()
            cut = False
            if done:
                return
            start = newline + 1


def _discard(_line: bytes, _cut: bool) -> bool:
    return False


@dataclass(eq=False)
class _Child:
    process: asyncio.subprocess.Process
    workdir: str | None  # the host directory of a "none" child; bwrap's is a tmpfs
    shut_down: bool = False
    readers: list[asyncio.Task[None]] = field(default_factory=list)


class _Session:
    """What one job's child has said: log lines, the final message, the stderr tail."""

    def __init__(self, token: str, limits: SandboxLimits) -> None:
        self._prefix = token.encode("ascii") + b" "
        self._limits = limits
        self.logs: list[LogLine] = []
        self.dropped = 0
        self.final: dict[str, Any] | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)

    def add(self, line: LogLine) -> None:
        if len(self.logs) < self._limits.max_log_lines:
            self.logs.append(line)
        else:
            self.dropped += 1

    def on_stdout(self, raw: bytes, cut: bool) -> bool:
        if not raw.startswith(self._prefix):
            # Not ours: the protocol descriptor is private, but be robust anyway.
            self.add(LogLine(_now(), "stdout", _clip(raw.decode("utf-8", "replace"))))
            return False
        if cut:
            return False  # a protocol line over the size bound: unusable
        try:
            message = json.loads(raw[len(self._prefix) :])
        except ValueError:
            return False
        if not isinstance(message, dict):
            return False
        kind = message.get("k")
        if kind == "log":
            self._on_log(message)
            return False
        if kind in ("result", "error"):
            self.final = message
            return True
        return False

    def _on_log(self, message: dict[str, Any]) -> None:
        stamp, stream, text = message.get("t"), message.get("s"), message.get("x")
        if not isinstance(text, str) or stream not in ("stdout", "stderr"):
            return
        when = _now()
        if isinstance(stamp, int):
            with contextlib.suppress(ValueError, OverflowError, OSError):
                when = datetime.fromtimestamp(stamp / 1e9, UTC)
        self.add(LogLine(when, stream, _clip(text)))

    def on_stderr(self, raw: bytes, cut: bool) -> bool:
        # Crash dumps name the runner's frames: show its name, not where it is installed.
        text = raw.decode("utf-8", "replace")
        text = text.replace(_RUNNER_PATH, "<sandbox>").replace(SANDBOX_RUNNER, "<sandbox>")
        if cut:
            text += " ... [cut]"
        self.stderr_tail.append(text[:MAX_LOG_LINE_CHARS])
        self.add(LogLine(_now(), "stderr", _clip(text)))
        return False

    def all_logs(self, child_dropped: int = 0) -> tuple[LogLine, ...]:
        dropped = self.dropped + max(child_dropped, 0)
        if not dropped:
            return tuple(self.logs)
        notice = LogLine(
            _now(),
            "stderr",
            f"[{dropped} more log lines were dropped: the limit is "
            f"{self._limits.max_log_lines} lines]",
        )
        return (*self.logs, notice)

    def crash_detail(self) -> str:
        tail = [line for line in self.stderr_tail if line.strip()][-_CRASH_TAIL_LINES:]
        if not tail:
            return ""
        return "; last stderr lines:\n" + "\n".join(tail)

    def code_frames(self) -> str:
        """The user's frames from a faulthandler dump on stderr (as after SIGXCPU)."""
        frames = [line for line in self.stderr_tail if 'File "<code>"' in line]
        if not frames:
            return ""
        return "\n".join(["Where the code was (most recent call first):", *frames])


class CodeSandbox:
    """Runs one code node per fresh child process, with a few processes started ahead of
    time (warm pool) so a task does not pay interpreter start-up.

    ``confinement`` ``None`` resolves the default (``bwrap``) on entry. Entering runs one
    job as a check and raises :class:`SandboxUnavailable` (naming the cause) when the
    sandbox cannot start or run code here.
    """

    def __init__(
        self,
        limits: SandboxLimits,
        warm_processes: int = 2,
        confinement: Confinement | None = None,
        workdir_root: str | None = None,
    ) -> None:
        self._limits = limits
        self._warm = max(0, warm_processes)
        self._confinement = confinement
        self._workdir_root = workdir_root
        self._runner_source = RUNNER.read_bytes()
        self._root_links = _root_links()
        self._config = json.dumps(
            {
                "cpu_seconds": max(1, int(limits.cpu_seconds)),
                "memory_bytes": int(limits.memory_bytes),
                "file_bytes": FILE_SIZE_LIMIT,
                "nproc_headroom": NPROC_HEADROOM,
                "modules": list(CURATED_MODULES),
            }
        )
        self._env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        self._started = False
        self._closing = False
        self._ready: collections.deque[_Child] = collections.deque()
        self._filling: set[asyncio.Task[None]] = set()
        self._active: set[_Child] = set()
        self._none_active = asyncio.Event()
        self._none_active.set()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def confinement(self) -> Confinement:
        if self._confinement is None:
            raise RuntimeError("the sandbox has not been entered yet")
        return self._confinement

    async def __aenter__(self) -> CodeSandbox:
        if self._confinement is None:
            self._confinement = await asyncio.to_thread(resolve_confinement)
        self._started = True
        self._closing = False
        self._refill()
        try:
            await self._check()
        except BaseException:
            await self.close()
            raise
        return self

    async def _check(self) -> None:
        """Run one small job; raise SandboxUnavailable with the cause when it fails."""
        probe = await self.run("result = sum(range(5))", {}, timeout_seconds=60.0)
        if not probe.ok or probe.output != 10:
            raise SandboxUnavailable(
                f"the code sandbox ({self.confinement.describe()}) does not work here: "
                f"{probe.error_code}: {probe.error_message}"
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Kill and reap every child: the warm ones and those still running a job."""
        self._closing = True
        for child in list(self._active):
            child.shut_down = True
            _kill_group(child.process)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SETTLE_SECONDS + 1.0):
                await self._none_active.wait()  # their runs hand them to clean-up
        if self._filling:
            await asyncio.gather(*list(self._filling), return_exceptions=True)
        idle = list(self._ready)
        self._ready.clear()
        await asyncio.gather(*(self._dispose(child) for child in idle), return_exceptions=True)
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def run(
        self,
        source: str,
        inputs: Mapping[str, JsonValue],
        timeout_seconds: float | None = None,
    ) -> CodeResult:
        """Run ``source`` with ``inputs`` in a fresh child process; never raises for
        anything the code does (only CancelledError when the caller is cancelled)."""
        wall = (
            timeout_seconds
            if timeout_seconds is not None and timeout_seconds > 0
            else self._limits.wall_seconds
        )
        try:
            child = await self._claim()
        except (OSError, ValueError, RuntimeError) as exc:
            log.exception("could not start a code sandbox process")
            return CodeResult(
                ok=False,
                output=None,
                error_code="code.crashed",
                error_message=f"could not start the sandbox process: {exc}",
            )
        self._active.add(child)
        self._none_active.clear()
        finished = False
        try:
            result = await self._drive(child, source, inputs, wall)
            finished = True
            return result
        finally:
            self._refill()
            # Reaping and removing the directory need not delay the result; but when the
            # caller is cancelled (or anything went wrong) they finish before it hears so.
            # Shielded: a second cancellation leaves the clean-up running (close() awaits it).
            cleanup = self._in_background(self._dispose(child))
            self._active.discard(child)
            if not self._active:
                self._none_active.set()
            if not finished:
                await asyncio.shield(cleanup)

    # --- the pool -------------------------------------------------------------------

    async def _spawn(self) -> _Child:
        if self.confinement.kind == "bwrap":
            return await self._spawn_bwrap()
        workdir = tempfile.mkdtemp(prefix="flowyard-code-", dir=self._workdir_root)
        try:
            process = await asyncio.create_subprocess_exec(
                self.confinement.python,
                "-I",
                "-S",
                "-B",
                str(RUNNER),
                self._config,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workdir,
                env={**self._env, "HOME": workdir},
                start_new_session=True,
            )
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return _Child(process, workdir)

    async def _spawn_bwrap(self) -> _Child:
        confinement = self.confinement
        # The runner reaches the sandbox as data (a read-only file bwrap makes from this
        # descriptor): the executor's installation need not be readable by the sandbox user.
        runner = os.memfd_create("flowyard-sandbox-runner", os.MFD_CLOEXEC)
        try:
            os.write(runner, self._runner_source)
            os.lseek(runner, 0, os.SEEK_SET)
            command = self._bwrap_command(runner)
            if confinement.user is not None:
                uid, gid = confinement.user
                switch = [f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
                command = [confinement.setpriv, *switch, *command]
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd="/",
                env={"PATH": self._env["PATH"], "LANG": self._env["LANG"]},
                start_new_session=True,
                pass_fds=(runner,),
            )
        finally:
            os.close(runner)
        return _Child(process, None)

    def _bwrap_command(self, runner_fd: int) -> list[str]:
        confinement = self.confinement
        command = [confinement.bwrap, "--unshare-all", "--unshare-user"]
        if confinement.disable_userns:
            command.append("--disable-userns")
        command += ["--die-with-parent", "--new-session", "--hostname", SANDBOX_HOSTNAME]
        command.append("--clearenv")
        for name, value in {**self._env, "HOME": WORKDIR}.items():
            command += ["--setenv", name, value]
        command += ["--ro-bind", "/usr", "/usr", *self._root_links]
        prefix = confinement.python_prefix
        if prefix and prefix != "/usr" and not prefix.startswith("/usr/"):
            command += ["--ro-bind", prefix, prefix]
        command += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
        command += ["--size", str(max(1, self._limits.disk_bytes)), "--tmpfs", WORKDIR]
        command += ["--symlink", WORKDIR, "/tmp", "--chdir", WORKDIR]
        command += ["--ro-bind-data", str(runner_fd), SANDBOX_RUNNER]
        command += ["--remount-ro", "/"]
        command += ["--", confinement.python, "-I", "-S", "-B", SANDBOX_RUNNER, self._config]
        return command

    async def _claim(self) -> _Child:
        """A warm child if one is alive, else a new one (the caller refills the pool)."""
        while self._ready:
            child = self._ready.popleft()
            if child.process.returncode is None:
                return child
            self._in_background(self._dispose(child))
        # Starting a process must not be interrupted half-way: if the caller is cancelled
        # meanwhile, the start completes and a clean-up task (which close() awaits)
        # disposes of the new child.
        spawning = asyncio.create_task(self._spawn())
        try:
            return await asyncio.shield(spawning)
        except asyncio.CancelledError:
            self._in_background(self._dispose_when_started(spawning))
            raise

    async def _dispose_when_started(self, spawning: asyncio.Task[_Child]) -> None:
        with contextlib.suppress(Exception):
            await self._dispose(await spawning)

    def _refill(self) -> None:
        if not self._started or self._closing:
            return
        while len(self._ready) + len(self._filling) < self._warm:
            task = asyncio.create_task(self._fill_one())
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    async def _fill_one(self) -> None:
        try:
            child = await self._spawn()
        except Exception:
            log.exception("could not start a warm code sandbox process")
            return
        if self._closing:
            await self._dispose(child)
        else:
            self._ready.append(child)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _dispose(self, child: _Child) -> None:
        """Kill the child's process group, drain its pipes, reap it, remove its directory."""
        process = child.process
        _kill_group(process)
        if process.stdin is not None:
            process.stdin.close()
        # Read what is left (discarding it) so the pipes reach EOF: nothing waits on a
        # full pipe, and the transport can close. A stream that has a reader keeps it.
        streams = [process.stdout]
        if all(reader.done() for reader in child.readers):
            streams.append(process.stderr)
        drains = [
            asyncio.create_task(_read_lines(stream, 0, _discard))
            for stream in streams
            if stream is not None
        ]
        try:
            async with asyncio.timeout(_REAP_SECONDS):
                await process.wait()
        except TimeoutError:
            log.warning("code sandbox process %d was not reaped in time", process.pid)
        for task in (*drains, *child.readers):
            task.cancel()
        await asyncio.gather(*drains, *child.readers, return_exceptions=True)
        if child.workdir is not None:
            await asyncio.to_thread(_remove_tree, child.workdir)

    # --- one job ----------------------------------------------------------------------

    async def _drive(
        self, child: _Child, source: str, inputs: Mapping[str, JsonValue], wall: float
    ) -> CodeResult:
        process = child.process
        token = secrets.token_hex(16)
        session = _Session(token, self._limits)
        job = (
            json.dumps(
                {
                    "token": token,
                    "source": source,
                    "inputs": dict(inputs),
                    "max_output_bytes": self._limits.max_output_bytes,
                    "max_log_lines": self._limits.max_log_lines,
                }
            ).encode("utf-8")
            + b"\n"
        )
        stderr_reader = asyncio.create_task(
            _read_lines(process.stderr, _RAW_LINE_BYTES, session.on_stderr)
        )
        child.readers.append(stderr_reader)
        protocol_bytes = self._limits.max_output_bytes + _PROTOCOL_OVERHEAD_BYTES
        timed_out = False
        try:
            async with asyncio.timeout(wall):
                await self._send(process, job, self._refill)
                await _read_lines(process.stdout, protocol_bytes, session.on_stdout)
                if session.final is None:
                    await process.wait()
        except TimeoutError:
            timed_out = True
        finally:
            _kill_group(process, after_exit=True)
        # The group is dead. Let the last stderr lines arrive (a child that reported has
        # already let go of its stderr) and, when there is no report, learn the exit status.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SETTLE_SECONDS):
                await asyncio.wait([stderr_reader])
                if session.final is None:
                    await process.wait()
        return self._outcome(child, session, timed_out, wall)

    @staticmethod
    async def _send(
        process: asyncio.subprocess.Process, job: bytes, then: Callable[[], None]
    ) -> None:
        """Write the job, call ``then`` (so the replacement child starts while this one
        works), and close stdin."""
        stdin = process.stdin
        if stdin is None:
            return
        try:
            stdin.write(job)
            then()
            await stdin.drain()
            stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child died: its exit status tells why

    def _outcome(
        self, child: _Child, session: _Session, timed_out: bool, wall: float
    ) -> CodeResult:
        final = session.final
        if final is not None:
            dropped = final.get("dropped")
            logs = session.all_logs(dropped if isinstance(dropped, int) else 0)
            if final.get("k") == "result":
                return CodeResult(ok=True, output=final.get("output"), logs=logs)
            code = final.get("code")
            return CodeResult(
                ok=False,
                output=None,
                error_code=code if code in _ERROR_CODES else "code.crashed",
                error_message=str(final.get("message", "")),
                stack_trace=str(final.get("trace", "")),
                logs=logs,
            )
        logs = session.all_logs()
        status = child.process.returncode
        killed_by = self._killing_signal(status)
        if timed_out:
            return self._failure(
                "code.timeout",
                f"the code did not finish within its time limit of {wall:g} s",
                logs,
            )
        if child.shut_down:
            return self._failure(
                "code.crashed", "the sandbox was shut down while the code was running", logs
            )
        if killed_by == signal.SIGXCPU:
            return self._failure(
                "code.cpu",
                f"the code used more than its CPU-time limit of {self._limits.cpu_seconds} s",
                logs,
                session.code_frames(),
            )
        if killed_by is not None:
            name = _signal_name(killed_by)
            hint = ""
            if killed_by == signal.SIGKILL:
                hint = " (the CPU-time hard limit, or the system ran out of memory)"
            return self._failure(
                "code.crashed",
                f"the code's process was killed by {name}{hint}{session.crash_detail()}",
                logs,
            )
        how = "did not exit" if status is None else f"exited with status {status}"
        return self._failure(
            "code.crashed",
            f"the code's process {how} without reporting a result{session.crash_detail()}",
            logs,
        )

    def _killing_signal(self, status: int | None) -> int | None:
        """The signal that ended the code's process, from the child's exit status.

        bwrap exits with 128 + n when the process it ran died of signal n (so code that
        exits with such a status on purpose is reported as killed by that signal)."""
        if status is None:
            return None
        if status < 0:
            return -status
        if self.confinement.kind == "bwrap" and 128 < status < 128 + signal.NSIG:
            return status - 128
        return None

    @staticmethod
    def _failure(code: str, message: str, logs: tuple[LogLine, ...], trace: str = "") -> CodeResult:
        return CodeResult(
            ok=False,
            output=None,
            error_code=code,
            error_message=message,
            stack_trace=trace,
            logs=logs,
        )
