"""Task log lines: what a line is, how it is classified and filtered, and its text form.

Code nodes' ``print`` output is ``stdout``; ``logging`` records and anything else written
to stderr is ``stderr``. A stderr line that starts with a level name (the sandbox's log
format is ``"%(levelname)s %(message)s"``) carries that level. *Errors* are stderr lines
other than DEBUG/INFO records, plus the line the executor adds when an attempt fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_QUIET_LEVELS = frozenset({"DEBUG", "INFO"})


class LogFilter(StrEnum):
    ALL = "all"
    OUTPUT = "output"
    ERRORS = "errors"


@dataclass(frozen=True)
class LogRecord:
    run_id: str
    node_id: str
    attempt: int
    seq: int
    time: datetime
    stream: str  # "stdout" | "stderr"
    level: str  # one of LEVELS, or ""
    text: str

    @property
    def is_error(self) -> bool:
        return self.stream == "stderr" and self.level not in _QUIET_LEVELS

    def matches(self, which: LogFilter, grep: str = "") -> bool:
        if which is LogFilter.OUTPUT and self.stream != "stdout":
            return False
        if which is LogFilter.ERRORS and not self.is_error:
            return False
        return not grep or grep.lower() in self.text.lower()

    def render(self) -> str:
        """One line of a downloaded log: time, task#attempt, stream, level, text."""
        stamp = self.time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        level = f" {self.level}" if self.level else ""
        return f"{stamp} {self.node_id}#{self.attempt} {self.stream}{level} {self.text}"


def level_of(stream: str, text: str) -> str:
    """The log level a stderr line starts with ("ERROR boom" -> "ERROR"), else ""."""
    if stream != "stderr":
        return ""
    head = text.split(" ", 1)[0].rstrip(":")
    return head if head in LEVELS else ""
