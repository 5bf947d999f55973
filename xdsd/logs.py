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
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

#: Log formats ``--log-format`` accepts.
LOG_FORMATS = ("text", "json")

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


def configure_logging(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger once for the process (the CLI calls it): ``level``
    (``debug``, ``info``, ...) and ``log_format`` (``text`` or ``json``) to ``stream``
    (stderr). Wire-level loggers stay at INFO or above. Raises ValueError for an unknown
    format or level."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; known: {', '.join(LOG_FORMATS)}")
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.INFO, number))
