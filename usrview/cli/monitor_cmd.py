"""``usrview monitor``: the integrity-monitoring service (docs/monitoring.md)."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

from usrview.cli._common import add_keys_option, add_store_option, load_keyring, signature_policy
from usrview.errors import UsageError
from usrview.journal import BOOT_FALLBACK_MESSAGE_ID
from usrview.verify import monitor

HELP = "integrity monitor: periodic verification, journald records, Prometheus metrics"
DESCRIPTION = """\
Verify the current image every --interval (incrementally: unchanged files are
not read again) and fully every --full-interval, reading at most --io-limit
MB/s for hashing.  Each finding is a journald record when running under systemd
(MESSAGE_ID %s), else a line on stderr.  --metrics-file is rewritten
atomically after each run in node_exporter's textfile-collector format;
--report-dir receives one JSON report per run.  At its start it reports each boot
fallback the store records and no monitor reported yet (MESSAGE_ID %s).
With --once: one run, and the exit status of verify (0 clean, 1 findings, 2 error).
""" % (monitor.INTEGRITY_MESSAGE_ID, BOOT_FALLBACK_MESSAGE_ID)

_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> float:
    """``90``, ``30s``, ``15min``, ``2h``, ``7d``, ``1w`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text)
    if not m or m.group(2) not in _UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"invalid duration {text!r} (e.g. 30s, 15min, 2h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def register(sub, common) -> None:
    p = sub.add_parser("monitor", parents=[common], help=HELP, description=DESCRIPTION)
    add_store_option(p)
    add_keys_option(p)
    p.add_argument("--once", action="store_true", help="one run, then exit with its status")
    p.add_argument("--full", action="store_true", help="with --once: a full run (ignore the cache)")
    p.add_argument("--interval", default="15min", help="between incremental runs (default 15min)")
    p.add_argument("--full-interval", default="7d", help="between full runs (default 7d)")
    p.add_argument("--io-limit", type=float, metavar="MB/s", help="most bytes read per second for hashing "
                   "(MB = 10^6 bytes; default unlimited)")
    p.add_argument("--jobs", type=int, metavar="N", help="worker processes (default: the number of CPUs)")
    p.add_argument("--metrics-file", type=Path, metavar="PATH", help="Prometheus textfile to write")
    p.add_argument("--report-dir", type=Path, metavar="DIR", help="where JSON reports go")
    p.add_argument("--keep-reports", type=int, default=monitor.DEFAULT_KEEP_REPORTS, metavar="N",
                   help=f"reports kept (default {monitor.DEFAULT_KEEP_REPORTS})")
    p.set_defaults(func=run)


def run(args, cfg) -> int:
    if args.io_limit is not None and args.io_limit <= 0:
        raise UsageError("--io-limit must be positive")
    mon = monitor.Monitor(
        store_root=args.store or cfg.store,
        keyring=load_keyring(args.keys or cfg.keys, signature_policy(args, cfg)),
        interval=duration(args.interval), full_interval=duration(args.full_interval),
        io_limit=args.io_limit * 1e6 if args.io_limit else None, metrics_file=args.metrics_file,
        report_dir=args.report_dir, keep_reports=args.keep_reports, jobs=args.jobs)
    # Fallbacks happen at boot, before the monitor starts: reported once, at its start.
    monitor.report_boot_events(mon.store_root, mon.journal)
    if args.once:
        return mon.run_once(full=True if args.full else None)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: mon.terminate())
    print("usrview: monitor started", file=sys.stderr)
    mon.run_forever()
    return 0
