"""Stores what an attempt printed (FEATURES H3) and announces it to live tails.

At the end of each attempt its lines go to the ``logs`` collection in chunks of
:data:`CHUNK_LINES` (:class:`flowyard.adapters.history.HistoryStore`), numbered from 0
with the time and stream the sandbox captured and the level of log records; a failed
attempt gets one more line with its error. Then a ``LogsAppended`` envelope on the
run-events topic (keyed by run id) wakes the gateway's ``TailLogs`` streams of that run.
Storing logs never fails the attempt: a store error is logged and the run goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from flowyard import codec
from flowyard.adapters.history import HistoryStore, LogChunk
from flowyard.adapters.kafka import Publisher
from flowyard.adapters.mongo import MongoStore
from flowyard.config import Topics
from flowyard.domain.run import Attempt
from flowyard.errors import InfrastructureError
from flowyard.history.logs import LogRecord, level_of
from flowyard.v1 import events_pb2

from flowyard_executor.sandbox import LogLine

CHUNK_LINES = 1000

log = logging.getLogger(__name__)


def records(attempt: Attempt, lines: Sequence[LogLine], now: datetime) -> list[LogRecord]:
    """The attempt's lines as records, plus a closing error line when it failed."""
    found = [
        LogRecord(
            run_id=attempt.run_id,
            node_id=attempt.node_id,
            attempt=attempt.number,
            seq=seq,
            time=line.time,
            stream=line.stream,
            level=level_of(line.stream, line.text),
            text=line.text,
        )
        for seq, line in enumerate(lines)
    ]
    if attempt.error is not None:
        found.append(
            LogRecord(
                run_id=attempt.run_id,
                node_id=attempt.node_id,
                attempt=attempt.number,
                seq=len(found),
                time=attempt.finished_at or now,
                stream="stderr",
                level="ERROR",
                text=f"task failed: {attempt.error.code}: {attempt.error.message}",
            )
        )
    return found


class LogSink:
    def __init__(self, store: MongoStore, publisher: Publisher, topics: Topics) -> None:
        self._history = HistoryStore(store)
        self._publisher = publisher
        self._topics = topics

    async def store(
        self, dispatch: events_pb2.Envelope, attempt: Attempt, lines: Sequence[LogLine]
    ) -> None:
        found = records(attempt, lines, datetime.now(UTC))
        if not found:
            return
        try:
            for chunk, start in enumerate(range(0, len(found), CHUNK_LINES)):
                await self._history.append_logs(
                    LogChunk(
                        run_id=attempt.run_id,
                        workflow_id=dispatch.workflow_id,
                        node_id=attempt.node_id,
                        attempt=attempt.number,
                        chunk=chunk,
                        lines=found[start : start + CHUNK_LINES],
                    )
                )
            envelope = codec.new_envelope(
                dispatch.run_id, dispatch.workflow_id, dispatch.workflow_version
            )
            envelope.logs_appended.CopyFrom(
                events_pb2.LogsAppended(
                    node_id=attempt.node_id, attempt=attempt.number, last_seq=found[-1].seq
                )
            )
            await self._publisher.publish(self._topics.run_events, attempt.run_id, envelope)
        except InfrastructureError as exc:
            log.warning(
                "logs of %s/%s#%d not stored: %s",
                attempt.run_id,
                attempt.node_id,
                attempt.number,
                exc,
            )
