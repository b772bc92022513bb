"""The monitor: journald records (captured on a test datagram socket), metrics, reports."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.prereq import require_privileged, require_tools
from tests.test_verify import MAIN_FILES, World, _mode
from usrview import journal, verify
from usrview.verify import monitor
from usrview.view.guard import INTEGRITY_MESSAGE_ID


def decode(datagram: bytes) -> dict[str, str]:
    """Parse one native-protocol datagram (the inverse of journal.encode)."""
    fields, i = {}, 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            fields[k.decode()] = v.decode()
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", datagram[nl + 1:nl + 9])
            fields[line.decode()] = datagram[nl + 9:nl + 9 + n].decode()
            assert datagram[nl + 9 + n:nl + 10 + n] == b"\n"
            i = nl + 10 + n
    return fields


@pytest.fixture
def sink(tmp_path):
    path = str(tmp_path / "journal.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.2)

    def records():
        out = []
        while True:
            try:
                out.append(decode(s.recv(1 << 20)))
            except (TimeoutError, socket.timeout):
                return out

    yield path, records
    s.close()


def test_encode_binary_safe_and_roundtrip():
    data = journal.encode({"MESSAGE": "two\nlines", "PATH": "/usr/bin/x", "N": 3})
    assert data.startswith(b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\n")
    assert decode(data) == {"MESSAGE": "two\nlines", "PATH": "/usr/bin/x", "N": "3"}
    with pytest.raises(ValueError):
        journal.encode({"bad key": "x"})


def test_under_systemd():
    assert journal.under_systemd({"INVOCATION_ID": "x"}) and journal.under_systemd({"JOURNAL_STREAM": "1:2"})
    assert not journal.under_systemd({})


def test_plain_lines_when_not_under_systemd(capsys):
    j = journal.Journal(use_journal=False)
    j.send("integrity violation: x", PATH="/usr/x")
    assert capsys.readouterr().err == "usrview: integrity violation: x\n"


def test_guard_records_reach_the_journal_in_the_same_format(sink):
    """The view logs with extra fields; JournalHandler sends them as journal fields."""
    path, records = sink
    logger = logging.getLogger("test.guard")
    handler = journal.JournalHandler(journal.Journal(path, use_journal=True))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("integrity violation: /usr/bin/x", extra={"MESSAGE_ID": INTEGRITY_MESSAGE_ID,
                     "PATH": "/usr/bin/x", "PACKAGE": "p", "EXPECTED": "sha256:a", "ACTUAL": "sha256:b"})
    finally:
        logger.removeHandler(handler)
        handler.journal.close()
    (rec,) = records()
    assert rec["MESSAGE_ID"] == INTEGRITY_MESSAGE_ID and rec["PRIORITY"] == "3"
    assert (rec["PATH"], rec["PACKAGE"], rec["EXPECTED"], rec["ACTUAL"]) == ("/usr/bin/x", "p", "sha256:a", "sha256:b")


@pytest.fixture
def world(tmp_path, rpm_packages, gpg_key):
    require_privileged("chmod of stored files")
    require_tools("rpm")
    return World(tmp_path, [rpm_packages("tool", "1.0", "1", MAIN_FILES)], gpg_key)


def _metrics(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) usrview_verify_\w+ .+", line), line
            continue
        name, value = line.rsplit(" ", 1)
        float(value)
        out[name] = value
    return out


def test_monitor_run_writes_records_metrics_report(world, sink, tmp_path):
    path, records = sink
    metrics = tmp_path / "textfile" / "usrview.prom"
    metrics.parent.mkdir()
    reports = tmp_path / "reports"
    mon = monitor.Monitor(world.store.root, world.keyring, metrics_file=metrics, report_dir=reports,
                          keep_reports=2, jobs=2, journal=journal.Journal(path, use_journal=True))
    try:
        _monitor_runs(world, mon, metrics, reports, records)
    finally:
        mon.journal.close()


def _monitor_runs(world, mon, metrics, reports, records):
    assert mon.run_once() == 0  # the first run is full (no full run recorded)
    m = _metrics(metrics)
    assert m["usrview_verify_last_run_full"] == "1" and m["usrview_verify_last_run_status"] == "0"
    assert m['usrview_verify_findings{kind="file"}'] == "0"
    assert m["usrview_verify_files_checked"] == str(len(MAIN_FILES))
    assert float(m["usrview_verify_last_success_timestamp_seconds"]) > 0
    assert records() == []

    _mode(world.pkgdir("tool"))
    (world.pkgdir("tool") / "usr/bin/extra").write_bytes(b"x")
    assert mon.run_once() == 1
    m2 = _metrics(metrics)
    assert m2["usrview_verify_last_run_full"] == "0" and m2["usrview_verify_last_run_status"] == "1"
    assert m2['usrview_verify_findings{kind="file"}'] == "1"
    assert m2['usrview_verify_findings{kind="unowned"}'] == "1"
    assert m2["usrview_verify_last_success_timestamp_seconds"] == m["usrview_verify_last_success_timestamp_seconds"]
    # incremental: only the chmod-ed file (its ctime changed) was read again
    assert m2["usrview_verify_hashed_bytes"] == str(len(MAIN_FILES[0].content))
    recs = records()
    assert [(r["MESSAGE_ID"], r["KIND"], r["PATH"], r.get("FLAGS", "")) for r in recs] == [
        (INTEGRITY_MESSAGE_ID, "file", "/usr/bin/tool", ".M......."),
        (INTEGRITY_MESSAGE_ID, "unowned", "/usr/bin/extra", "")]
    assert recs[0]["PACKAGE"] == world.pkgids["tool"] and recs[0]["PRIORITY"] == "3"
    assert recs[0]["EXPECTED"] == "mode=100755" and recs[0]["ACTUAL"] == "mode=104755"
    assert recs[0]["SYSLOG_IDENTIFIER"] == "usrview"

    mon.run_once()
    files = sorted(p.name for p in reports.iterdir() if p.name.startswith(monitor.REPORT_PREFIX))
    assert len(files) == 2  # rotated: keep 2
    body = json.loads((reports / files[-1]).read_text())
    assert body["status"] == 1 and body["summary"]["findings"] == 2
    assert [f["kind"] for f in body["findings"]] == ["file", "unowned"]
    assert not [p for p in metrics.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_io_limit_throttles(world, tmp_path):
    big = world.pkgdir("tool") / "usr/share/tool/data"
    size = big.stat().st_size
    # The token bucket itself: 1 MB/s for 3 MB waits about 2 s (burst 1 MiB).
    now, slept = [0.0], []

    def sleep(t):
        slept.append(t)
        now[0] += t

    b = verify.TokenBucket(1e6, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        b.take(1_000_000)
    assert sum(slept) == pytest.approx(3 - (1 << 20) / 1e6, rel=1e-6)
    # A fast limit does not start with a second's worth: from the start, at most the
    # rate plus one small burst (50 MB/s, 60 MB: 1.2 s less what 1 MiB saves).
    slept.clear()
    b = verify.TokenBucket(50e6, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        b.take(20_000_000)
    assert sum(slept) == pytest.approx((60e6 - (1 << 20)) / 50e6, rel=1e-6)
    assert size > 0


def test_io_limit_reaches_every_read_of_a_run(world, monkeypatch):
    """A run with an I/O limit takes every byte it hashes from its bucket (one
    process: what the bucket sees stays in this one)."""
    taken = []
    monkeypatch.setattr(verify.TokenBucket, "take", lambda self, n: taken.append((self.rate, n)))
    report = world.verify(full=True, jobs=1, io_limit=123e6)
    assert report.findings == [] and report.stats.hashed_bytes > 0
    assert {rate for rate, _n in taken} == {123e6}
    assert sum(n for _rate, n in taken) == report.stats.hashed_bytes
    taken.clear()
    assert world.verify(full=True, jobs=1).findings == []
    assert taken == []


def test_monitor_cli_once(world, sink, tmp_path):
    path, records = sink
    metrics = tmp_path / "m.prom"
    env = {**os.environ, journal.SOCKET_ENV: path, "INVOCATION_ID": "test"}
    _mode(world.pkgdir("tool"))
    r = subprocess.run([sys.executable, "-m", "usrview.cli", "monitor", "--once", "--store", str(world.store.root),
                        "--keys", str(world.key.public_path), "--metrics-file", str(metrics)],
                       capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert r.returncode == 1, r.stderr
    assert [x["PATH"] for x in records()] == ["/usr/bin/tool"]
    assert _metrics(metrics)["usrview_verify_last_run_status"] == "1"
    env.pop("INVOCATION_ID")
    r = subprocess.run([sys.executable, "-m", "usrview.cli", "monitor", "--once", "--store", str(world.store.root),
                        "--keys", str(world.key.public_path)], capture_output=True, text=True, env=env,
                       cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert r.returncode == 1 and "integrity violation: .M.......    /usr/bin/tool" in r.stderr
    assert records() == []
