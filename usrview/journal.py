"""Structured records for journald over its native socket; plain stderr lines elsewhere.

journald's native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL) is one datagram
per record on ``/run/systemd/journal/socket``: ``KEY=value`` lines, and for a
value holding a newline the binary-safe form ``KEY\\n`` + the value's length as a
little-endian 64-bit integer + the value + ``\\n``.  Field names are upper case
letters, digits and underscores, not starting with an underscore.

We write to the journal only when running under systemd (``JOURNAL_STREAM`` or
``INVOCATION_ID`` in the environment, as systemd sets for its services);
otherwise a record is one line on stderr.  Tests point the socket elsewhere with
the constructor argument or ``USRVIEW_JOURNAL_SOCKET``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import sys

#: MESSAGE_ID of integrity-violation records, the view's and the monitor's alike
#: (journald style, a fixed uuid): one journal query finds both.
INTEGRITY_MESSAGE_ID = "4b1f6c2e9a7d4f0e8c35d2a1b7e9f604"
#: MESSAGE_ID of a boot fallback: the initrd served another image than the one
#: asked for (usrview.verify.monitor.report_boot_events).
BOOT_FALLBACK_MESSAGE_ID = "8529cb511b004c09b6542c3d724c4b99"

JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: Overrides JOURNAL_SOCKET (tests).
SOCKET_ENV = "USRVIEW_JOURNAL_SOCKET"
SYSLOG_IDENTIFIER = "usrview"
_FIELD_RE = re.compile(r"^[A-Z0-9][A-Z0-9_]*$")

#: syslog priorities
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def under_systemd(environ=os.environ) -> bool:
    """True when systemd started us (and so the journal is listening)."""
    return "JOURNAL_STREAM" in environ or "INVOCATION_ID" in environ


def encode(fields: dict[str, object]) -> bytes:
    """One native-protocol datagram for ``fields`` (values str, bytes or numbers)."""
    out = bytearray()
    for key, value in fields.items():
        if not _FIELD_RE.match(key):
            raise ValueError(f"invalid journal field name {key!r}")
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class Journal:
    """Sends records: to journald when ``use_journal`` (default: under systemd), else to ``stream``.

    Attributes:
        path: the journal socket.
        use_journal: whether records go to the journal.
        stream: where plain lines go.
    """

    def __init__(self, path: str | None = None, *, use_journal: bool | None = None, stream=None):
        self.path = path or os.environ.get(SOCKET_ENV) or JOURNAL_SOCKET
        self.use_journal = under_systemd() if use_journal is None else use_journal
        self.stream = stream if stream is not None else sys.stderr
        self._sock: socket.socket | None = None
        self._connected = False

    def connect(self) -> None:
        """Connect to the journal now: later records reach it even when its socket's
        path no longer resolves from this process's root (a daemon started in the
        initrd, after switch-root).  Without a journal, records go on as before."""
        if not self.use_journal or self._connected:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            return
        self.close()
        self._sock, self._connected = sock, True

    def send(self, message: str, *, priority: int = 6, **fields: object) -> None:
        if self.use_journal:
            record = {"MESSAGE": message, "PRIORITY": priority, "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER}
            record.update({k: v for k, v in fields.items() if v is not None and v != ""})
            try:
                if self._connected:
                    self._sock.send(encode(record))
                    return
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(encode(record), self.path)
                return
            except OSError as e:
                # a record too large for one datagram, or no journal: never lose it
                self.stream.write(f"usrview: journal unavailable ({e.strerror}); record follows\n")
        self.stream.write(f"usrview: {message}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock, self._connected = None, False


class JournalHandler(logging.Handler):
    """A logging handler sending each record to the journal with its upper-case
    ``extra`` attributes as fields (MESSAGE_ID, PATH, PACKAGE ...): how the view's
    on-open violations (usrview.view.guard) reach the journal in the monitor's format."""

    def __init__(self, journal: Journal | None = None):
        super().__init__()
        self.journal = journal or Journal(use_journal=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {k: v for k, v in vars(record).items() if k.isupper() and _FIELD_RE.match(k)}
            self.journal.send(self.format(record), priority=PRIORITY.get(record.levelno, 6),
                              LOGGER=record.name, **fields)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)
