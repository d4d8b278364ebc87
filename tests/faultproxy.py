"""A fault-injecting HTTP proxy in front of the loopback catalogue servers (tests/servers.py).

It forwards every request unchanged to the servers, unless a fault is queued
for that service; then it misbehaves the way networks and overloaded archives
do at an observatory at night:

=================  =======================================================================
kind               what the client sees
=================  =======================================================================
``drip``           the real answer, trickled at ``rate`` bytes/s, or over ``seconds``
                   (Content-Length declared)
``huge``           200 + a valid VOTable of ``mb`` megabytes (chunked, or with
                   ``declare=True`` a Content-Length announcing it)
``wrong_columns``  the real answer under 200 with every FIELD renamed (a valid VOTable,
                   not the columns asked for)
``html``           200 with an HTML error page (a captive portal or proxy page)
``reset``          the connection reset before any answer
``reset_mid``      headers and half the body, then a reset
``status``         ``status`` (429, 503 ...) with ``retry_after`` and a short body
=================  =======================================================================

``proxy.inject("gaia", "drip", rate=150, times=2)``; ``proxy.sent["gaia"]``
counts the body bytes written under faults, ``proxy.count(service)`` the
requests seen. ``proxy.settings(**changes)`` points every endpoint at the
proxy (same paths as the servers).
"""

from __future__ import annotations

import collections
import http.client
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from tests.servers import GAIA_COLUMNS_FOR_TESTS, CatalogServers, GaiaTemplate

_SERVICE_OF_PATH = {"colibri": "astrocolibri"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that hangs up mid-answer is the point here
        pass


class FaultProxy:
    """Loopback proxy on its own port; see the module docstring."""

    def __init__(self, upstream: CatalogServers):
        self.upstream = upstream
        self.faults: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.sent: dict[str, int] = collections.defaultdict(int)
        self.requests: list[tuple[str, str, str]] = []  # (service, path, fault kind or "")
        self.lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", 0), self._make_handler())
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, name="fault-proxy", daemon=True).start()

    # -- control
    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self):
        with self.lock:
            self.faults.clear()
            self.sent.clear()
            self.requests.clear()

    def inject(self, service: str, kind: str, *, times: int = 1, **opts):
        with self.lock:
            for _ in range(times):
                self.faults[service].append({"kind": kind, **opts})

    def count(self, service: str | None = None) -> int:
        with self.lock:
            return sum(1 for s, _, _ in self.requests if service is None or s == service)

    def settings(self, **changes):
        base = self.upstream.settings()
        urls = {k: getattr(base, k).replace(self.upstream.base, self.base)
                for k in ("gaia_tap", "simbad_tap", "vizier", "skybot", "vsx", "astrocolibri")}
        return self.upstream.settings(**{**urls, **changes})

    # -- plumbing
    def _forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream.port, timeout=30)
        keep = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection", "accept-encoding")}
        conn.request(method, path, body=body or None, headers=keep)
        resp = conn.getresponse()
        data = resp.read()
        out = (resp.status, {k: v for k, v in resp.getheaders() if k.lower() in ("content-type", "retry-after")}, data)
        conn.close()
        return out

    def _make_handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def _reset(self):
                # SO_LINGER 0: close() sends a TCP RST, as a crashed proxy or a NAT timeout does
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _write(self, service, data: bytes) -> bool:
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:
                    return False
                with proxy.lock:
                    proxy.sent[service] += len(data)
                return True

            def _head(self, status, ctype, length=None, extra=None):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                if length is None:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(length))
                self.end_headers()

            def _handle(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                path = self.path
                first = urlparse(path).path.strip("/").split("/")[0]
                service = _SERVICE_OF_PATH.get(first, first)
                with proxy.lock:
                    fault = proxy.faults[service].popleft() if proxy.faults[service] else None
                    proxy.requests.append((service, path, fault["kind"] if fault else ""))
                kind = fault["kind"] if fault else ""
                if kind == "reset":
                    return self._reset()
                if kind == "status":
                    msg = fault.get("body", b"busy, come back later")
                    extra = {"Retry-After": fault["retry_after"]} if fault.get("retry_after") is not None else {}
                    self._head(fault["status"], "text/plain", len(msg), extra)
                    self._write(service, msg)
                    return
                if kind == "html":
                    page = (b"<!DOCTYPE html><html><head><title>Service Unavailable</title></head>"
                            b"<body><h1>The archive is under maintenance</h1></body></html>")
                    self._head(200, "text/html", len(page))
                    self._write(service, page)
                    return
                if kind == "huge":
                    return self._huge(service, fault)
                status, headers, data = proxy._forward(method, path, self.headers, body)
                ctype = headers.get("Content-Type", "application/octet-stream")
                if kind == "wrong_columns":
                    data = data.replace(b'name="', b'name="x_').replace(b'ID="', b'ID="x_')
                if kind == "reset_mid":
                    self._head(status, ctype, len(data))
                    self._write(service, data[: len(data) // 2])
                    return self._reset()
                if kind == "drip":
                    self._head(status, ctype, len(data))
                    rate = len(data) / fault["seconds"] if "seconds" in fault else float(fault.get("rate", 150.0))
                    step = max(1, int(rate / 10))
                    for k in range(0, len(data), step):
                        if not self._write(service, data[k:k + step]):
                            return
                        time.sleep(step / rate)
                    return
                self._head(status, ctype, len(data), {k: v for k, v in headers.items() if k != "Content-Type"})
                try:
                    self.wfile.write(data)
                except OSError:
                    pass

            def _huge(self, service, fault):
                """A well-formed Gaia VOTable of ``mb`` megabytes, generated as it is sent."""
                tpl = GaiaTemplate()
                names = GAIA_COLUMNS_FOR_TESTS
                head = (tpl.head + "<TABLE>\n" + "\n".join(tpl.field(n) for n in names) + "\n<DATA>\n<TABLEDATA>\n").encode()
                row = ("<TR>" + "".join(f"<TD>{v}</TD>" for v in (
                    4583627001381815936, 120.0, 35.0, 2016.0, 1.0, 1.0, 1.0, 0.1, 15.0, 100.0, 15.5, 50.0, 14.5, 50.0,
                    1.0, "NOT_AVAILABLE", 1.0)) + "</TR>\n").encode()
                tail = ("</TABLEDATA>\n</DATA>\n" + tpl.tail).encode()
                total = int(float(fault.get("mb", 50)) * 1024 * 1024)
                n_rows = max(1, (total - len(head) - len(tail)) // len(row))
                size = len(head) + n_rows * len(row) + len(tail)
                declare = bool(fault.get("declare"))
                self._head(200, "application/x-votable+xml", size if declare else None)
                block = row * 500

                def send(data: bytes) -> bool:
                    return self._write(service, data if declare else b"%x\r\n%s\r\n" % (len(data), data))

                if not send(head):
                    return
                left = n_rows
                while left > 0:
                    k = min(left, 500)
                    if not send(block if k == 500 else row * k):
                        return
                    left -= k
                if send(tail) and not declare:
                    self._write(service, b"0\r\n\r\n")

        return Handler
