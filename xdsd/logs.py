"""Log formats: readable text by default, one JSON object per line with ``--log-format json``.

Structured fields travel as ``extra=`` on the logging call (``log.info("stream opened",
extra={"node": ..., "client": ...})``): every attribute of a record that the standard
``LogRecord`` does not have is a field. The text format puts them before the message as
``key=value`` (``node=client-1 type=clusters version=8d1f...: NACK ...``); the JSON format
makes each a key of the object, beside ``time``, ``level``, ``logger`` and ``message``.

Lines about a client carry ``node`` (its node id) and ``client`` (the stream or poller),
and lines about one type of resource ``type`` (``clusters``, ``endpoints``, ...) and
``version``. Callers on a hot path build the ``extra`` dict only when the level is enabled
(``log.isEnabledFor``): a disabled DEBUG line then costs one cached check.

Writing never blocks the caller (the event loop above all): ``configure_logging``
installs a ``QueueingHandler``, which formats a record where it is logged and puts the
line on a bounded queue that a writer thread drains into the stream. When the stream does
not keep up (stderr a pipe nobody reads) and the queue is full, the line is dropped and
counted (``dropped``; ``xdsd_log_records_dropped_total``), and once the queue has drained
the writer writes one line saying how many were dropped. At exit what is queued is
written, for at most ``close_timeout`` seconds.
"""

from __future__ import annotations

import datetime
import json
import logging
import queue
import sys
import threading
from typing import Any, TextIO

#: Log formats ``--log-format`` accepts.
LOG_FORMATS = ("text", "json")
#: How many formatted lines wait for the writer at most before lines are dropped.
LOG_QUEUE_LINES = 10_000

#: Loggers whose DEBUG is about wire details (HTTP/2 frames), not xdsd's decisions.
NOISY = ("hpack", "h2", "grpclib", "asyncio", "watchfiles")

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of ``record`` (what ``extra=`` added), in the order given."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: key=value ...: message`` (the fields part only when there are
    fields); values with spaces or quotes are JSON-quoted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        if not fields:
            return super().formatMessage(record)
        prefix = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        return f"{record.asctime} {record.levelname} {record.name}: {prefix}: {record.message}"


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601 with milliseconds), ``level``,
    ``logger``, ``message``, then every structured field, then ``exception`` (the
    traceback) when there is one. Values JSON cannot hold are written as their ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        out: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


class QueueingHandler(logging.Handler):
    """A handler whose ``emit`` never waits for the stream: formatted lines go on a queue
    of at most ``capacity`` lines that a daemon writer thread writes to ``stream``. A line
    that finds the queue full is dropped and counted in ``dropped``; when the queue next
    runs empty after drops, the writer writes one WARNING line (``N log lines dropped``)
    in the handler's format. ``close`` writes what is queued, waiting at most
    ``close_timeout`` seconds (the writer may be stuck on a stream nobody reads)."""

    def __init__(
        self, stream: TextIO, *, capacity: int = LOG_QUEUE_LINES, close_timeout: float = 2.0
    ) -> None:
        super().__init__()
        self.stream = stream
        self.close_timeout = close_timeout
        self._full = 0  # counted by the callers of emit
        self._failed = 0  # counted by the writer
        self._reported = 0
        self._lines: queue.Queue[str | None] = queue.Queue(capacity)
        self._writer = threading.Thread(target=self._write, name="xdsd-log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        """Queue ``record``'s line, or drop and count it when the queue is full."""
        try:
            line = self.format(record)
        except Exception:  # logging's own contract: report it (stderr), never raise
            self.handleError(record)
            return
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            self._full += 1

    @property
    def dropped(self) -> int:
        """Lines dropped so far: the queue was full, or the stream failed."""
        return self._full + self._failed

    @property
    def capacity(self) -> int:
        """The most lines the queue holds."""
        return self._lines.maxsize

    @capacity.setter
    def capacity(self, lines: int) -> None:
        with self._lines.mutex:
            self._lines.maxsize = lines

    def flush(self) -> None:
        """Wait until the writer has written every queued line, at most
        ``close_timeout`` seconds (before an immediate exit, ``os._exit``)."""
        lines = self._lines
        with lines.all_tasks_done:
            lines.all_tasks_done.wait_for(
                lambda: lines.unfinished_tasks == 0, timeout=self.close_timeout
            )

    def _write(self) -> None:
        while True:
            line = self._lines.get()
            try:
                if line is None:
                    return
                self._put(line)
            finally:
                self._lines.task_done()
            if self._lines.empty() and self.dropped != self._reported:
                count, self._reported = self.dropped - self._reported, self.dropped
                summary = logging.LogRecord(
                    __name__,
                    logging.WARNING,
                    __file__,
                    0,
                    "%d log line%s dropped: the log stream did not keep up",
                    (count, "" if count == 1 else "s"),
                    None,
                )
                self._put(self.format(summary))

    def _put(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a broken or closed stream: nowhere to tell
            self._failed += 1

    def close(self) -> None:
        """Write what is queued (at most ``close_timeout`` seconds), then stop."""
        try:
            self._lines.put(None, timeout=self.close_timeout)
        except queue.Full:
            pass  # the writer is stuck: the process exits without it (a daemon thread)
        else:
            self._writer.join(self.close_timeout)
        super().close()


def set_log_queue_lines(capacity: int) -> None:
    """Bound the queue of the root logger's ``QueueingHandler``s to ``capacity`` lines
    (the ``log_queue_lines`` setting; lines already queued stay)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, QueueingHandler):
            handler.capacity = capacity


def dropped_log_lines() -> int:
    """How many log lines the root logger's ``QueueingHandler``s dropped so far."""
    return sum(h.dropped for h in logging.getLogger().handlers if isinstance(h, QueueingHandler))


def configure_logging(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger once for the process (the CLI calls it): ``level``
    (``debug``, ``info``, ...) and ``log_format`` (``text`` or ``json``) to ``stream``
    (stderr), through a ``QueueingHandler`` (logging never blocks). Wire-level loggers
    stay at INFO or above. Raises ValueError for an unknown format or level."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; known: {', '.join(LOG_FORMATS)}")
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = QueueingHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(number)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.INFO, number))
