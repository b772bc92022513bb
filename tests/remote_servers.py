"""Real servers for the pull tests: nginx on 127.0.0.1 (origin, or a caching proxy),
and a fault-injecting HTTP proxy of our own.

Both run on a free loopback port and are stopped by the context manager that
started them, by their own process id or thread, even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.prereq import require_tools

NGINX = "/usr/sbin/nginx"
START_TIMEOUT = 10.0
#: Per-request access log: what the tests read to see what the server sent.
LOG_FORMAT = '$request_method $uri $status $body_bytes_sent "$http_range" $upstream_cache_status'
#: What docs/fleet.md tells a repository's server to send.
IMMUTABLE = 'add_header Cache-Control "public, max-age=31536000, immutable" always;'
SHORT_LIVED = 'add_header Cache-Control "public, max-age=60" always;'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited {proc.returncode} before it listened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {START_TIMEOUT} s")


@dataclass
class Nginx:
    """A running nginx: its url, prefix (config, logs, cache) and process."""

    url: str
    prefix: Path
    proc: subprocess.Popen

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    def requests(self) -> list[list[str]]:
        """The access log, one list of fields per request (method, uri, status, bytes, range, cache)."""
        if not self.access_log.exists():
            return []
        return [line.replace('"', "").split(" ") for line in self.access_log.read_text().splitlines()]


def _repository_locations() -> str:
    return f"""
        location ~ /latest$ {{ {SHORT_LIVED} }}
        location /objects/ {{ {IMMUTABLE} }}
        location ~ ^/images/.+/[0-9]+\\.json(\\.sig)?$ {{ {IMMUTABLE} }}
        location ~ /\\. {{ deny all; }}
    """


@contextlib.contextmanager
def nginx(prefix: Path, *, root: Path | None = None, upstream: str | None = None,
          tls: tuple[Path, Path] | None = None):
    """nginx serving ``root`` (an origin), or caching ``upstream`` (a proxy in front of one)."""
    require_tools(NGINX)
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    if root is not None:
        server = f"root {root};\n{_repository_locations()}"
    else:
        server = f"""
        location / {{
            proxy_pass {upstream};
            proxy_cache repo;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_cache_valid 200 206 10m;
            proxy_cache_key $uri;
            proxy_http_version 1.1;
        }}"""
    listen = f"127.0.0.1:{port}" + (" ssl" if tls else "")
    certs = f"ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]};" if tls else ""
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 512; }}
http {{
    log_format usrview '{LOG_FORMAT}';
    access_log {prefix}/access.log usrview;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=repo:10m max_size=1g inactive=1h;
    types {{ application/json json; application/x-rpm rpm; }}
    default_type application/octet-stream;
    server {{
        listen {listen};
        {certs}
        {server}
    }}
}}
""")
    with open(prefix / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _wait_for_port(port, proc)
        yield Nginx(f"{'https' if tls else 'http'}://{'localhost' if tls else '127.0.0.1'}:{port}", prefix, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()  # nginx's fast shutdown, its workers with it
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_tls_pair(where: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` (it is its own CA) and its key."""
    require_tools("openssl")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


# -- the fault-injecting proxy --------------------------------------------------------------

#: Faults: truncate (half the body, then close), stall (half, then silence),
#: corrupt (same length, bytes flipped), error500, reset (TCP RST, nothing sent),
#: endless (200, no length, bytes for ever), overlong (the whole file, Range ignored, then bytes
#: for ever), redirect_file (302 to file://), notfound.
FAULTS = ("truncate", "stall", "corrupt", "error500", "reset", "endless", "overlong", "redirect_file",
          "notfound")
ENDLESS_LIMIT = 256 << 20
ENDLESS_CHUNK = 1 << 16
STALL_SECONDS = 30


@dataclass
class Rule:
    """``fault`` for ``times`` requests whose path contains ``match``, after ``after`` such requests."""

    match: str
    fault: str
    times: int = 1
    after: int = 0


@dataclass
class FaultProxy:
    """Forwards to ``upstream_port``, injecting the faults its rules name.

    Attributes: url, rules, seen (path, Range header, fault) of every request.
    """

    upstream_port: int
    url: str = ""
    rules: list[Rule] = field(default_factory=list)
    seen: list[tuple[str, str, str]] = field(default_factory=list)
    open_writers: set = field(default_factory=set)
    stopping: asyncio.Event | None = None

    def _fault_for(self, path: str) -> str:
        for rule in self.rules:
            if rule.match in path and rule.after:
                rule.after -= 1
            elif rule.match in path and rule.times:
                rule.times -= 1
                return rule.fault
        return ""

    @staticmethod
    async def _endless(writer: asyncio.StreamWriter) -> None:
        for _ in range(ENDLESS_LIMIT // ENDLESS_CHUNK):
            writer.write(b"\x5a" * ENDLESS_CHUNK)
            await writer.drain()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = [h for h in lines[1:] if h and not h.lower().startswith(("connection:", "host:"))]
            rng = next((h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("range:")), "")
            fault = self._fault_for(path)
            self.seen.append((path, rng, fault))
            if fault == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if fault in ("error500", "notfound", "redirect_file"):
                status = {"error500": "500 Internal Server Error", "notfound": "404 Not Found",
                          "redirect_file": "302 Found"}[fault]
                extra = "Location: file:///etc/passwd\r\n" if fault == "redirect_file" else ""
                writer.write(f"HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
                             .encode())
                await writer.drain()
                return
            if fault == "endless":
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                await self._endless(writer)
                return
            if fault == "overlong":  # the whole file, Range ignored, then bytes for ever
                headers = [h for h in headers if not h.lower().startswith("range:")]
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            request = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.upstream_port}",
                       "Connection: close", *headers, "", ""]
            up_writer.write("\r\n".join(request).encode("latin-1"))
            await up_writer.drain()
            response = await up_reader.read()
            up_writer.close()
            resp_head, _, body = response.partition(b"\r\n\r\n")
            if fault == "corrupt" and body:
                body = bytes(b ^ 0xFF for b in body)
            if fault == "overlong":
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
                await self._endless(writer)
                return
            if fault in ("truncate", "stall"):
                writer.write(resp_head + b"\r\n\r\n" + body[:len(body) // 2])
                await writer.drain()
                if fault == "stall":
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), STALL_SECONDS)
                return
            writer.write(resp_head + b"\r\n\r\n" + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went away: nothing to answer
        finally:
            writer.close()
            self.open_writers.discard(writer)


@contextlib.contextmanager
def fault_proxy(upstream_port: int, rules: list[Rule] | None = None):
    """A :class:`FaultProxy` in a thread of its own, stopped on leaving."""
    proxy = FaultProxy(upstream_port, rules=list(rules or []))
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: dict = {}

    async def serve() -> None:
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        proxy.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        stop["event"] = proxy.stopping = asyncio.Event()
        ready.set()
        async with server:
            await stop["event"].wait()
            server.close()
            for writer in proxy.open_writers:
                writer.transport.abort()  # stalled and endless answers end here
            # handlers end by themselves (a stall waits on the stop event): cancelling
            # one makes asyncio's stream callback log an error
            await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}), return_exceptions=True)
            await asyncio.sleep(0)  # the aborted transports close

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    try:
        if not ready.wait(START_TIMEOUT):
            raise RuntimeError("the fault proxy did not start")
        yield proxy
    finally:
        if "event" in stop:
            loop.call_soon_threadsafe(stop["event"].set)
        thread.join(timeout=10)
        loop.close()


def copy_repository(repo: Path, dest: Path) -> Path:
    shutil.copytree(repo, dest, symlinks=True)
    return dest


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


