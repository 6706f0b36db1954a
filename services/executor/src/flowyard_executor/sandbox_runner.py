"""The child-process half of the code sandbox: runs exactly one code node, then exits.

:mod:`flowyard_executor.sandbox` starts this file as a script, ``python -I -S -B
sandbox_runner.py CONFIG`` where CONFIG is a JSON object (resource limits and the modules
to pre-import). It must only ever use the standard library: it never imports flowyard.

Life of a child:

1. Save a private duplicate of fd 1 for the protocol and point fd 1 at stderr, so that
   nothing the user's code (or a C library) writes to the file descriptors can land in
   the protocol stream.
2. Apply the resource limits to itself (CPU, address space, file size, core dumps,
   process count) and pre-import the curated modules; then block reading the job.
   Warm children wait here.
3. Read the job (one JSON document on one line): the source, the inputs, a random
   per-job token and the output/log limits.
4. Re-bind ``sys.stdout``/``sys.stderr`` to capturing streams, configure the root logger,
   run the source as a script and encode ``result``.
5. Point fds 1 and 2 at /dev/null (so the parent's stderr pipe ends), write the outcome
   and exit at once with ``os._exit`` (no atexit handlers, no waiting for threads the
   code may have started).

Protocol: every message is one line on the protocol descriptor, ``TOKEN SP JSON LF``:
``{"k": "log", "t": <ns since the epoch>, "s": "stdout"|"stderr", "x": text}`` for each
captured line, then exactly one final message, either ``{"k": "result", "dropped": n,
"output": value}`` or ``{"k": "error", "dropped": n, "code": ..., "message": ...,
"trace": ...}``. ``dropped`` counts the log lines withheld over the line limit.
"""

from __future__ import annotations

import builtins
import faulthandler
import gc
import importlib
import io
import json
import linecache
import logging
import mmap
import os
import resource
import signal
import sys
import threading
import time
import traceback
import types
from typing import Any, NoReturn

CODE_FILENAME = "<code>"
MAX_LOG_LINE_CHARS = 2000  # keep in step with sandbox.MAX_LOG_LINE_CHARS
MAX_MESSAGE_CHARS = 8_000
MAX_TRACE_CHARS = 64_000
BALLAST_BYTES = 8 * 1024 * 1024  # address space given back on MemoryError, to report it


# --- start-up -------------------------------------------------------------------------


def _set_limit(kind: int, soft: int, hard: int | None = None) -> None:
    """Lower a limit; never asks for more than the current hard limit allows."""
    _, current_hard = resource.getrlimit(kind)
    hard = soft if hard is None else hard
    if current_hard != resource.RLIM_INFINITY:
        soft = min(soft, current_hard)
        hard = min(hard, current_hard)
    try:
        resource.setrlimit(kind, (soft, hard))
    except (ValueError, OSError) as exc:
        os.write(2, f"sandbox: could not set resource limit {kind}: {exc}\n".encode())


def _tasks_of_this_user() -> int:
    """How many processes and threads the real user runs now (what RLIMIT_NPROC counts)."""
    uid = os.getuid()
    count = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        real_uid = threads = -1
        try:
            with open(f"/proc/{entry}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"Uid:"):
                        real_uid = int(line.split()[1])
                    elif line.startswith(b"Threads:"):
                        threads = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if real_uid == uid and threads > 0:
            count += threads
    return count


def _apply_limits(config: dict[str, Any]) -> None:
    cpu = int(config["cpu_seconds"])
    # SIGXCPU at the soft limit (dumping the Python stacks to stderr first, see main);
    # SIGKILL one second later if the code ignores SIGXCPU.
    _set_limit(resource.RLIMIT_CPU, cpu, cpu + 1)
    _set_limit(resource.RLIMIT_AS, int(config["memory_bytes"]))
    _set_limit(resource.RLIMIT_FSIZE, int(config["file_bytes"]))
    _set_limit(resource.RLIMIT_CORE, 0)
    # RLIMIT_NPROC counts every process and thread of the real user (and does not apply
    # to root), so it is a fork-bomb brake, not a precise quota: a few more than now.
    if os.getuid() != 0:
        _set_limit(resource.RLIMIT_NPROC, _tasks_of_this_user() + int(config["nproc_headroom"]))


# --- output capture -------------------------------------------------------------------


class _Channel:
    """Writes protocol messages to the private descriptor; counts log lines."""

    def __init__(self, fd: int, token: str, max_log_lines: int) -> None:
        self._fd = fd
        self._prefix = token.encode("ascii") + b" "
        self._max_log_lines = max_log_lines
        self._lock = threading.RLock()
        self.log_lines = 0
        self.dropped = 0

    def frame(self, payload: bytes) -> bytes:
        return self._prefix + payload + b"\n"

    def write_frame(self, frame: bytes) -> None:
        with self._lock:
            view = memoryview(frame)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]

    def send(self, message: dict[str, Any]) -> None:
        text = json.dumps(message, ensure_ascii=False)
        try:
            payload = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from the user's strings
            payload = text.encode("utf-8", "replace")
        self.write_frame(self.frame(payload))

    def log(self, stream: str, text: str) -> None:
        with self._lock:
            if self.log_lines >= self._max_log_lines:
                self.dropped += 1
                return
            self.log_lines += 1
            self.send({"k": "log", "t": time.time_ns(), "s": stream, "x": text})


class _Capture(io.TextIOBase):
    """A text stream that turns what is written to it into log lines, one per line."""

    def __init__(self, channel: _Channel, stream: str) -> None:
        super().__init__()
        self._channel = channel
        self._stream = stream
        self._parts: list[str] = []
        self._kept = 0  # characters held in _parts (at most MAX_LOG_LINE_CHARS)
        self._size = 0  # characters of the current line, including those not kept
        self._lock = threading.RLock()

    encoding = "utf-8"
    errors = "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        with self._lock:
            start = 0
            while True:
                newline = s.find("\n", start)
                if newline < 0:
                    self._append(s[start:])
                    break
                self._append(s[start:newline])
                self._emit()
                start = newline + 1
        return len(s)

    def flush(self) -> None:
        """Partial lines stay buffered until their newline (or the end of the run)."""

    def finish(self) -> None:
        with self._lock:
            if self._size:
                self._emit()

    def _append(self, text: str) -> None:
        if not text:
            return
        room = MAX_LOG_LINE_CHARS - self._kept
        if room > 0:
            kept = text[:room]
            self._parts.append(kept)
            self._kept += len(kept)
        self._size += len(text)

    def _emit(self) -> None:
        text = "".join(self._parts)
        if self._size > self._kept:
            text += f" ... [{self._size - self._kept} more characters]"
        self._parts = []
        self._kept = self._size = 0
        self._channel.log(self._stream, text)


# --- running the code -----------------------------------------------------------------


def _keep_user_frames(exc: traceback.TracebackException, seen: set[int]) -> None:
    if id(exc) in seen:
        return
    seen.add(id(exc))
    exc.stack = traceback.StackSummary.from_list(
        [frame for frame in exc.stack if frame.filename == CODE_FILENAME]
    )
    for nested in (exc.__cause__, exc.__context__):
        if nested is not None:
            _keep_user_frames(nested, seen)
    for member in getattr(exc, "exceptions", None) or ():
        _keep_user_frames(member, seen)


def _user_trace(exc: BaseException) -> str:
    """The traceback with only the frames of the user's code."""
    try:
        summary = traceback.TracebackException.from_exception(exc)
        _keep_user_frames(summary, set())
        text = "".join(summary.format())
    except Exception:
        return ""
    if len(text) > MAX_TRACE_CHARS:
        text = "...\n" + text[-MAX_TRACE_CHARS:]
    return text


def _describe(exc: BaseException) -> str:
    try:
        detail = str(exc)
    except Exception:
        detail = "<str() of the exception failed>"
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + " ..."
    return text


class _NotJson(Exception):
    pass


def _reject(value: object) -> NoReturn:
    raise _NotJson(
        f"the result contains a value of type {type(value).__qualname__!r}, "
        "which JSON cannot represent"
    )


def _namespace(inputs: Any, modules: dict[str, types.ModuleType]) -> dict[str, Any]:
    if not isinstance(inputs, dict):
        inputs = {}
    namespace: dict[str, Any] = dict(modules)
    namespace.update(
        __name__="__main__",
        __doc__=None,
        __builtins__=builtins,
        inputs=inputs,
        trigger=inputs.get("trigger"),
        context=inputs.get("context") or {},
        node_context=inputs.get("node_context") or {},
        upstream=inputs.get("upstream") or {},
    )
    return namespace


def _run(
    job: dict[str, Any], channel: _Channel, modules: dict[str, types.ModuleType], memory: int
) -> bytes:
    """Runs the job; returns the final protocol frame."""
    # An untouched anonymous mapping: costs address space (RLIMIT_AS), not time or RAM.
    ballast = mmap.mmap(-1, BALLAST_BYTES)
    source = str(job["source"])
    max_output_bytes = int(job["max_output_bytes"])
    memory_note = f"the code ran out of memory (the limit is {memory} bytes of address space)"

    out = _Capture(channel, "stdout")
    err = _Capture(channel, "stderr")
    for name, stream in (("stdout", out), ("stderr", err), ("stdin", io.StringIO(""))):
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    namespace = _namespace(job.get("inputs"), modules)
    module = types.ModuleType("__main__")
    module.__dict__.update(namespace)
    namespace = module.__dict__
    runner_module = sys.modules.get("__main__")
    sys.modules["__main__"] = module
    linecache.cache[CODE_FILENAME] = (
        len(source),
        None,
        source.splitlines(keepends=True),
        CODE_FILENAME,
    )

    failure: tuple[str, str, str] | None = None
    try:
        code = compile(source, CODE_FILENAME, "exec", dont_inherit=True)
        exec(code, namespace)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            failure = ("code.exception", _describe(exc), _user_trace(exc))
    except MemoryError as exc:
        ballast.close()
        namespace.clear()
        detail = _describe(exc)
        failure = (
            "code.memory",
            f"{detail} ({memory_note})"
            if detail != "MemoryError"
            else f"MemoryError: {memory_note}",
            _user_trace(exc),
        )
    except BaseException as exc:
        failure = ("code.exception", _describe(exc), _user_trace(exc))
    finally:
        sys.modules["__main__"] = runner_module or module
    ballast.close()

    out.finish()
    err.finish()
    dropped = channel.dropped
    if failure is None:
        try:
            text = json.dumps(
                namespace.get("result"), ensure_ascii=False, allow_nan=False, default=_reject
            )
            encoded = text.encode("utf-8")
        except MemoryError:
            raise
        except _NotJson as exc:
            failure = ("code.output_not_json", str(exc), "")
        except UnicodeEncodeError:
            failure = (
                "code.output_not_json",
                "the result contains a string that is not valid Unicode (a lone surrogate)",
                "",
            )
        except RecursionError:
            failure = ("code.output_not_json", "the result is nested too deeply for JSON", "")
        except (ValueError, TypeError) as exc:
            failure = ("code.output_not_json", f"the result is not JSON: {exc}", "")
        else:
            if len(encoded) > max_output_bytes:
                failure = (
                    "code.output_too_large",
                    f"the result is {len(encoded)} bytes of JSON, over the limit of "
                    f"{max_output_bytes} bytes",
                    "",
                )
            else:
                head = b'{"k":"result","dropped":%d,"output":' % dropped
                return channel.frame(head + encoded + b"}")
    code_name, message, trace = failure
    payload = json.dumps(
        {"k": "error", "dropped": dropped, "code": code_name, "message": message, "trace": trace},
        ensure_ascii=False,
    )
    return channel.frame(payload.encode("utf-8", "replace"))


def main() -> None:
    config: dict[str, Any] = json.loads(sys.argv[1])
    protocol_fd = os.dup(1)  # not inherited by anything the code starts
    os.dup2(2, 1)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    # On SIGXCPU, dump where the code was to stderr, then die of SIGXCPU as usual.
    faulthandler.register(signal.SIGXCPU, file=sys.stderr, all_threads=True, chain=True)
    _apply_limits(config)
    modules = {name: importlib.import_module(name) for name in config["modules"]}
    # Pay the one-time costs now, while warm, not in the job: the parser's first use, and
    # a full collection over everything imported (then frozen out of later collections).
    compile("x = [1]\nprint(x)", "<warm-up>", "exec", dont_inherit=True)
    gc.collect()
    gc.freeze()

    # One line: the job starts as soon as its bytes arrive, not when stdin is closed.
    job: dict[str, Any] = json.loads(sys.stdin.buffer.readline())
    channel = _Channel(protocol_fd, str(job["token"]), int(job["max_log_lines"]))
    memory = int(config["memory_bytes"])
    fallback = channel.frame(
        json.dumps(
            {
                "k": "error",
                "dropped": 0,
                "code": "code.memory",
                "message": "MemoryError: the code ran out of memory "
                f"(the limit is {memory} bytes of address space)",
                "trace": "",
            }
        ).encode()
    )
    try:
        frame = _run(job, channel, modules, memory)
    except MemoryError:
        frame = fallback
    except Exception as exc:  # a fault of the runner itself, not of the code
        frame = channel.frame(
            json.dumps(
                {
                    "k": "error",
                    "dropped": channel.dropped,
                    "code": "code.crashed",
                    "message": f"the sandbox failed: {_describe(exc)}",
                    "trace": "",
                }
            ).encode()
        )
    try:
        # Let go of stderr first, so the parent sees its end before the final message.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        channel.write_frame(frame)
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
