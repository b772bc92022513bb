"""What the serving commands import before they serve (issues 11 and 14).

Every module a daemon imports is paid at each mount's start, and in the initrd
in CPU under qemu's TCG before READY; what only other commands need (deploy's
lint, diff's version comparison, the importer and its decompressors, the bulk
check, the repository client, the configuration's parser when there is no
configuration) must stay out.  Each command is run in a child interpreter up to
where it needs a file that is not there: its imports are all done by then.
Then the cyclic collector, paused while a daemon imports, runs again, and
initrd-mount waits for the FUSE device before it mounts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from tests.test_mount import REPO
from usrview import config
from usrview.boot import initrd

#: The child: run the command line, then report its status, its modules and the collector's state.
CHILD = """
import gc, json, sys
from usrview.cli.main import main
status = main(sys.argv[1:])
print(json.dumps({"status": status, "modules": sorted(sys.modules), "collecting": gc.isenabled()}))
"""
#: Modules (and packages) no daemon imports before it serves.
NOT_FOR_SERVING = ("usrview.images.lint", "usrview.images.diff", "usrview.images.vercmp", "usrview.store.importer",
                   "usrview.store.payload", "usrview.store.decompress", "usrview.verify", "usrview.remote",
                   "usrview.cli.deploy_cmd", "usrview.cli.verify_cmd", "zstandard", "httpx", "tomllib", "sqlite3",
                   "multiprocessing")
#: What serving needs, imported before it serves.
SERVING = ("trio", "pyfuse3", "usrview.view.fs", "usrview.view.mount", "usrview.view.ctree")


def run_command(*args, env_extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (config.CONFIG_ENV, "NOTIFY_SOCKET")}
    env.update(env_extra or {})
    r = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                       env=env, check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def _unneeded(modules: list[str]) -> list[str]:
    # the default configuration file, on a host that has one, is parsed
    allowed = ("tomllib",) if config.DEFAULT_CONFIG.exists() else ()
    # the carried patch's pyfuse3 knows its version without importlib.metadata (35 modules); a stock one asks it
    import pyfuse3
    unneeded = NOT_FOR_SERVING + (() if hasattr(pyfuse3._pyfuse3, "package_version") else ("importlib.metadata",))
    return [m for m in modules if m.startswith(unneeded) and not m.startswith(allowed)]


def test_mount_imports_what_serving_needs_and_nothing_of_the_other_commands(tmp_path):
    # no key file: the command stops right after its imports, before it opens anything
    r = run_command("mount", "--store", tmp_path / "store", "--keys", tmp_path / "no-keys", tmp_path / "mnt")
    assert r["status"] == 2
    assert set(SERVING) <= set(r["modules"])
    assert _unneeded(r["modules"]) == []
    assert r["collecting"]  # paused while it imported, collecting again


def test_initrd_mount_imports_what_serving_needs_and_nothing_of_the_other_commands(tmp_path):
    (tmp_path / "sysroot").mkdir()
    cmdline, kmsg = tmp_path / "cmdline", tmp_path / "kmsg"
    cmdline.write_text("root=/dev/vda\n")
    kmsg.touch()
    r = run_command("initrd-mount", "--sysroot", tmp_path / "sysroot", "--cmdline", cmdline,
                    env_extra={initrd.KMSG_ENV: str(kmsg)})
    assert r["status"] == 2 and "nothing to serve" in kmsg.read_text()  # no store: after the imports
    assert set(SERVING) <= set(r["modules"])
    assert _unneeded(r["modules"]) == []
    assert r["collecting"]


def test_a_command_that_does_not_serve_imports_no_fuse(tmp_path):
    r = run_command("status", "--store", tmp_path / "store")
    assert r["status"] == 2
    assert not {"trio", "pyfuse3", "usrview.view.fs"} & set(r["modules"])
    assert r["collecting"]


def test_a_configuration_file_is_still_read(tmp_path):
    """tomllib is imported when there is a file to parse: its setting is used, a wrong one refused."""
    conf = tmp_path / "usrview.toml"
    conf.write_text('store = "%s"\n' % (tmp_path / "elsewhere"))
    r = subprocess.run([sys.executable, "-m", "usrview.cli", "--config", str(conf), "status"], capture_output=True,
                       text=True, cwd=REPO, check=False)
    assert r.returncode == 2 and f"no store at {tmp_path / 'elsewhere'}" in r.stderr
    conf.write_text("store = [\n")
    r = subprocess.run([sys.executable, "-m", "usrview.cli", "--config", str(conf), "status"], capture_output=True,
                       text=True, cwd=REPO, check=False)
    assert r.returncode == 2 and r.stderr.startswith(f"usrview: error: cannot read configuration {conf}: ")


def test_wait_for_fuse_returns_once_the_device_appears(tmp_path, monkeypatch):
    device = tmp_path / "fuse"
    monkeypatch.setenv(initrd.FUSE_DEVICE_ENV, str(device))
    monkeypatch.setenv("PATH", str(tmp_path))  # no modprobe: said on the console, and the wait goes on
    console = initrd.Console(kmsg=str(tmp_path / "kmsg"))
    timer = threading.Timer(0.3, device.touch)
    timer.start()
    try:
        t0 = time.monotonic()
        assert initrd.wait_for_fuse(console) is True
        assert 0.25 < time.monotonic() - t0 < initrd.FUSE_WAIT
    finally:
        timer.cancel()
        console.close()
    assert console.lines[0] == f"waiting for {device}"
    assert console.lines[1].startswith("modprobe fuse: ")
    assert initrd.wait_for_fuse(console) is False  # there: no wait, no line
    assert len(console.lines) == 2


def test_wait_for_fuse_gives_up_after_its_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv(initrd.FUSE_DEVICE_ENV, str(tmp_path / "never"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(initrd, "FUSE_WAIT", 0.2)
    console = initrd.Console(kmsg=str(tmp_path / "kmsg"))
    t0 = time.monotonic()
    assert initrd.wait_for_fuse(console) is True  # then the mount says why it cannot
    assert time.monotonic() - t0 < 5
    console.close()

