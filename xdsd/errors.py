"""The one error hierarchy of xdsd.

Every error a user can cause carries structured fields (file, line, field path) so that
it can be printed as ``path:line: field: message`` and also inspected by tests and by the
admin server. Nothing here imports anything else from xdsd.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

#: A PEM private key (any kind, encrypted or not), whole or cut off.
_PEM_KEY = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)",
    re.DOTALL,
)


def redact_text(text: str) -> str:
    """``text`` with every PEM private key in it (even one cut off before its END line)
    replaced by ``[redacted]``: for messages and log lines that may quote what they
    could not parse."""
    if "PRIVATE KEY-----" not in text:
        return text
    return _PEM_KEY.sub(lambda m: f"-----BEGIN {m.group(1)}PRIVATE KEY----- [redacted]", text)


class Severity(Enum):
    """How bad a problem found while loading configuration is."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem found in configuration: where it is and what is wrong.

    ``path`` is the file (as given, relative or absolute), ``line`` is 1-based (0 when the
    problem concerns the whole file or no file at all), ``field`` is the dotted/indexed field
    path inside the document (``http[0].route[1].weight``), empty when the problem is with
    the document as a whole. A PEM private key quoted in ``message`` (a parser's
    excerpt of what it could not read) is redacted (``redact_text``), so no output made
    from a problem shows one. ``os_error`` is the symbol of the OS error behind a
    failure to read (``EMFILE``; "" for a problem of the files themselves): what tells a
    fault of the machine, which may clear with no edit (``listing.environment_fault``);
    it takes no part in equality and is not shown.
    """

    path: str
    line: int
    field: str
    message: str
    severity: Severity = Severity.ERROR
    os_error: str = dataclasses.field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", redact_text(self.message))

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        kind = "" if self.severity is Severity.ERROR else "warning: "
        if self.field:
            return f"{where}: {kind}{self.field}: {self.message}"
        return f"{where}: {kind}{self.message}"

    def as_warning(self) -> Problem:
        """The same problem with warning severity."""
        return dataclasses.replace(self, severity=Severity.WARNING)

    def as_error(self) -> Problem:
        """The same problem with error severity."""
        return dataclasses.replace(self, severity=Severity.ERROR)


class XdsdError(Exception):
    """Base of every error xdsd raises on purpose."""


class ConfigError(XdsdError):
    """Configuration could not be loaded; ``problems`` lists every error found (at least one)
    and ``warnings`` what else was noticed.

    The whole load is refused: callers keep whatever they had before.
    """

    def __init__(self, problems: Sequence[Problem], warnings: Sequence[Problem] = ()) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.warnings: tuple[Problem, ...] = tuple(warnings)
        super().__init__("\n".join(str(p) for p in self.problems))


class InternalError(ConfigError):
    """Loading, translating or publishing a configuration raised what it never should (a
    bug, or memory running out). ``problems`` holds one problem saying so; the log has
    the traceback. Handled as a refused load: nothing was published."""


class TranslationError(XdsdError):
    """A loaded mesh cannot be turned into configuration for one node (e.g. an address
    collision between two of its listeners). ``problems`` says why."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class InconsistentSnapshotError(XdsdError):
    """A snapshot references resources it does not contain (a bug in translation or an
    inconsistent raw Envoy resource); it is never published."""


class UsageError(XdsdError):
    """A command was called with arguments that cannot work (the CLI exits 2)."""


class StartupError(XdsdError):
    """``xdsd serve`` cannot start: an address it should listen on cannot be bound (in
    use, not an address of this host, a privileged port), or the config directory does
    not exist. The message is one line naming the address or directory and the flag and
    settings key that choose it (the CLI exits 1)."""


class CredentialRefused(XdsdError):
    """A client's credential (an xdsd token, a client certificate) does not entitle it to
    what it asked for. ``code`` is the gRPC status it gets (``UNAUTHENTICATED``: the
    credential is absent or does not verify; ``PERMISSION_DENIED``: it names someone
    else; ``INVALID_ARGUMENT``: the request itself cannot be served), ``reason`` a short
    word it is counted by (``token_expired``, ``identity_mismatch``, ...). The message
    never quotes the credential."""

    def __init__(self, code: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
