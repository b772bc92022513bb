"""The integrity monitor: periodic verification, journald records, metrics, reports.

Each run is :func:`usrview.verify.run` over the current image -- incremental
(the verified-results cache) every ``interval``, full (cache ignored, rewritten)
every ``full_interval`` -- with hashing throttled to ``io_limit`` bytes per
second.  After each run:

- every finding becomes one record (:class:`usrview.journal.Journal`): under
  systemd a journald record with MESSAGE_ID :data:`usrview.journal.INTEGRITY_MESSAGE_ID`
  (the view's on-open violations use the same id and the fields PATH, PACKAGE,
  EXPECTED, ACTUAL), plus FLAGS, KIND, IMAGE; else a line on stderr;
- the Prometheus textfile (node_exporter's textfile collector format) is
  rewritten atomically;
- a JSON report (the findings and the summary) is written to ``report_dir``,
  keeping the newest ``keep_reports``.

While a run goes on, the metrics say so (``run_in_progress`` 1 and
``run_started_timestamp_seconds``), so a run stuck on I/O shows as stale rather than
as the last run's status.  SIGTERM ends the monitor at any point, also in the middle
of a run (:meth:`Monitor.terminate`: the run is abandoned, its workers killed).

The time of the last full run and of the last clean run survive restarts in
``report_dir/state.json`` (or beside the metrics file when there is no report
directory).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from usrview import verify
from usrview.errors import UsrviewError
from usrview.journal import INTEGRITY_MESSAGE_ID, Journal
from usrview.store.store import JSON_FILE_MAX, Store, read_store_file

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 15 * 60
DEFAULT_FULL_INTERVAL = 7 * 24 * 3600
DEFAULT_KEEP_REPORTS = 30
REPORT_PREFIX = "usrview-verify-"
STATE_FILE = "state.json"
METRIC_PREFIX = "usrview_verify_"


@dataclass
class MonitorState:
    last_full: float = 0.0
    last_success: float = 0.0

    @classmethod
    def load(cls, path: Path | None) -> MonitorState:
        try:
            data = json.loads(read_store_file(path, JSON_FILE_MAX)) if path else {}
            return cls(float(data.get("last_full", 0)), float(data.get("last_success", 0)))
        except (OSError, ValueError, TypeError, AttributeError):
            return cls()

    def save(self, path: Path | None) -> None:
        if path:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            Store.atomic_write(path, (json.dumps({"last_full": self.last_full,
                                                  "last_success": self.last_success}) + "\n").encode())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Terminated(BaseException):
    """SIGTERM arrived while a run was going on: the run is abandoned (a BaseException, so
    that nothing on the way catches it)."""


def metrics_text(report: verify.Report | None, *, full: bool, started: float, duration: float,
                 state: MonitorState, status: int | None, running_since: float = 0.0) -> str:
    """The textfile: one gauge per line, HELP and TYPE first (Prometheus text format 0.0.4).
    ``status`` None: no run finished yet (only the state and the progress gauges);
    ``running_since``: when the run now going on started (0: none)."""
    stats = report.stats if report else verify.Stats()
    by_kind = report.by_kind() if report else {k: 0 for k in verify.KINDS}
    lines = []

    def gauge(name, help_, samples):
        lines.append(f"# HELP {METRIC_PREFIX}{name} {help_}")
        lines.append(f"# TYPE {METRIC_PREFIX}{name} gauge")
        for labels, value in samples:
            lab = "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}" if labels else ""
            lines.append(f"{METRIC_PREFIX}{name}{lab} {value}")

    if status is not None:
        gauge("files_checked", "Files checked by the last run.", [({}, stats.files)])
        gauge("packages_checked", "Packages checked by the last run.", [({}, stats.packages)])
        gauge("findings", "Findings of the last run, by kind.", [({"kind": k}, v) for k, v in by_kind.items()])
        gauge("hashed_bytes", "Bytes hashed by the last run.", [({}, stats.hashed_bytes)])
        gauge("cache_hits", "Files the last run took from the verified-results cache.", [({}, stats.cache_hits)])
        gauge("last_run_timestamp_seconds", "When the last run started (Unix time).", [({}, f"{started:.3f}")])
        gauge("last_run_duration_seconds", "How long the last run took.", [({}, f"{duration:.3f}")])
        gauge("last_run_full", "1 when the last run ignored the cache.", [({}, int(full))])
        gauge("last_run_status", "Exit status of the last run: 0 clean, 1 findings, 2 error.", [({}, status)])
    gauge("last_success_timestamp_seconds", "When the last clean run started (Unix time; 0: never).",
          [({}, f"{state.last_success:.3f}")])
    gauge("last_full_timestamp_seconds", "When the last full run started (Unix time; 0: never).",
          [({}, f"{state.last_full:.3f}")])
    gauge("run_in_progress", "1 while a run goes on (stale when it started long ago).",
          [({}, int(running_since > 0))])
    gauge("run_started_timestamp_seconds", "When the run going on started (Unix time; 0: none).",
          [({}, f"{running_since:.3f}")])
    return "\n".join(lines) + "\n"


@dataclass
class Monitor:
    """Attributes: see the module docstring; ``journal`` receives the records."""

    store_root: Path
    keyring: object
    interval: float = DEFAULT_INTERVAL
    full_interval: float = DEFAULT_FULL_INTERVAL
    io_limit: float | None = None
    metrics_file: Path | None = None
    report_dir: Path | None = None
    keep_reports: int = DEFAULT_KEEP_REPORTS
    jobs: int | None = None
    journal: Journal = field(default_factory=Journal)
    stop_event: threading.Event = field(default_factory=threading.Event)
    clock: object = time.time
    running: bool = False
    #: metrics_text's arguments for the last finished run (rewritten with running_since)
    _last_metrics: dict | None = None

    def terminate(self) -> None:
        """Stop (SIGTERM): after the run going on, which is abandoned at once (Terminated)."""
        self.stop_event.set()
        if self.running:
            raise Terminated()

    def _write_metrics(self, **kw) -> None:
        if self.metrics_file:
            # readers see the old or the new file, never a part: node_exporter reads it at any moment
            Store.atomic_write(Path(self.metrics_file), metrics_text(**kw).encode())

    def _state_path(self) -> Path | None:
        if self.report_dir:
            return Path(self.report_dir) / STATE_FILE
        if self.metrics_file:
            return Path(self.metrics_file).with_name(f".{Path(self.metrics_file).name}.state.json")
        return None

    def run_once(self, *, full: bool | None = None) -> int:
        """One run; ``full=None``: full when the last full run is older than full_interval.
        Returns the run's exit status."""
        state = MonitorState.load(self._state_path())
        started = self.clock()
        if full is None:
            full = started - state.last_full >= self.full_interval
        report = None
        t0 = time.monotonic()
        last = self._last_metrics or {"report": None, "full": False, "started": 0.0, "duration": 0.0,
                                      "status": None}
        self.running = True   # before the metrics say so: a SIGTERM from then on ends the run
        try:
            self._write_metrics(**last, state=state, running_since=started)
            if self.stop_event.is_set():   # asked to stop just before
                raise Terminated()
            store = Store.open(self.store_root)
            report = verify.run(store, self.keyring, full=full, io_limit=self.io_limit, jobs=self.jobs)
            status = report.exit_code
            errors = list(report.errors)
        except UsrviewError as e:
            status, errors = 2, [str(e)]
        finally:
            self.running = False
        duration = time.monotonic() - t0
        if report is not None:
            for f in report.findings:
                self.emit(f, report.image)
        for e in errors:
            self.journal.send(f"verification failed: {e}", priority=3)
        if status == 0:
            state.last_success = started
        if full and status != 2:
            state.last_full = started
        state.save(self._state_path())
        self._last_metrics = {"report": report, "full": full, "started": started, "duration": duration,
                              "status": status}
        self._write_metrics(**self._last_metrics, state=state)
        if self.report_dir:
            self.write_report(report, full=full, started=started, duration=duration, status=status,
                              errors=errors)
        return status

    def emit(self, f: verify.Finding, image: str) -> None:
        what = {"file": "integrity violation", "missing": "integrity violation: file missing",
                "notdir": "integrity violation: not a directory",
                "unowned": "integrity violation: unowned file", "header": "integrity violation: header",
                "unsigned": "unsigned package", "image": "integrity violation: image record",
                "legacy": "package accepted only by the legacy signature policy"}[f.kind]
        self.journal.send(f"{what}: {f.line}" + (f" ({f.package})" if f.package else ""),
                          priority=4 if f.kind in ("unsigned", "legacy") else 3,
                          MESSAGE_ID=INTEGRITY_MESSAGE_ID, PATH=f.path, PACKAGE=f.package or "(image)",
                          FLAGS=f.flags, EXPECTED=f.expected, ACTUAL=f.actual, KIND=f.kind,
                          LINE=f.line, IMAGE=image)

    def write_report(self, report, *, full, started, duration, status, errors) -> Path:
        d = Path(self.report_dir)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
        name = f"{REPORT_PREFIX}{stamp}-{int(started * 1e6) % 1_000_000:06d}.json"
        body = {"started": started, "duration": duration, "full": full, "status": status, "errors": errors,
                "summary": report.summary() if report else None,
                "findings": [f.to_json() for f in report.findings] if report else []}
        Store.atomic_write(d / name, (json.dumps(body, indent=1) + "\n").encode(), mode=0o600)
        reports = sorted(p for p in d.iterdir() if p.name.startswith(REPORT_PREFIX) and p.suffix == ".json")
        for old in reports[:-self.keep_reports] if self.keep_reports > 0 else []:
            old.unlink()
        return d / name

    def run_forever(self) -> None:
        """Run every ``interval`` seconds until ``stop_event`` is set."""
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                self.run_once()
            except Terminated:
                return
            self.stop_event.wait(max(0.0, self.interval - (time.monotonic() - started)))


# -- boot fallbacks -------------------------------------------------------------------

def report_boot_events(store_root: Path, journal: Journal) -> int:
    """Send each boot fallback the store records (usrview.images.bootstate) and no
    monitor has reported yet to the journal, once: the store then records it as
    reported.  Returns how many were sent; a store that cannot be read or written
    is one error record."""
    # Imported here: this section was added at the module's end, apart from the runs.
    from usrview.images import bootstate
    from usrview.journal import BOOT_FALLBACK_MESSAGE_ID

    try:
        store = Store.open(store_root)
        with store.lock():
            state = bootstate.load(store)
            events = state.unreported()
            for e in events:
                journal.send(f"boot fallback: {e.line()}", priority=3, MESSAGE_ID=BOOT_FALLBACK_MESSAGE_ID,
                             IMAGE=e.booted, REQUESTED=e.requested, REASON=e.reason, BOOT_ID=e.boot_id)
            if events:
                state.reported = events[-1].seq
                bootstate.save(store, state)
            return len(events)
    except UsrviewError as e:
        journal.send(f"cannot report boot fallbacks: {e}", priority=3)
        return 0
