"""JSON-over-HTTP plumbing shared by the stand-in's servers and clients (stdlib only).

The stand-in speaks plain HTTP/1.0 with JSON bodies on all three ports: raft API (join/leave forwarding),
"gRPC" API (status, member list, kv) and admin API. Clients raise Unreachable when no TCP connection is made.
"""
from __future__ import annotations

import json
import socket
from typing import Any, Callable


class Unreachable(OSError):
    """No TCP connection could be made to `addr` (refused, no route, timeout)."""

    def __init__(self, addr: str, reason: str) -> None:
        super().__init__(addr, reason)
        self.addr, self.reason = addr, reason

    def __str__(self) -> str:
        return f"cannot connect to http://{self.addr}: {self.reason}"


def split_addr(addr: str) -> tuple[str, int]:
    """Split "host:port" into (host, port); raise ValueError naming the value when malformed."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address {addr!r} is not host:port")
    return host, int(port)


def request(addr: str, method: str, path: str, body: Any = None,
            timeout: float | None = None, headers: dict[str, str] | None = None,
            tls: Callable[[socket.socket], socket.socket] | None = None) -> tuple[int, str, bytes]:
    """Send one HTTP/1.0 request to `addr`; return (status, reason, body bytes). Raise Unreachable if it cannot connect.

    A raw-socket client (not http.client): the CLIs start faster without the email/http.client imports.
    `tls(sock)`, when given, wraps the connected socket (see client_tls); a failed TLS handshake raises OSError.
    """
    host, port = split_addr(addr)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise Unreachable(addr, e.strerror or str(e)) from None
    if tls is not None:
        try:
            sock = tls(sock)
        except OSError:
            sock.close()
            raise
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {len(payload)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    chunks = []
    with sock:
        sock.sendall(head.encode() + b"\r\n" + payload)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    header, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    parts = header.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"{addr}: not an HTTP reply: {header[:80]!r}")
    return int(parts[1]), parts[2] if len(parts) > 2 else "", content


def call_json(addr: str, method: str, path: str, body: Any = None, timeout: float | None = None,
              headers: dict[str, str] | None = None,
              tls: Callable[[socket.socket], socket.socket] | None = None) -> Any:
    """Send a request and decode a 200 JSON reply; raise RuntimeError with the body on any other status."""
    status, reason, data = request(addr, method, path, body, timeout, headers, tls)
    if status != 200:
        raise RuntimeError(f"{status} {reason}: {data.decode(errors='replace')}")
    return json.loads(data) if data else None


Handler = Callable[[dict[str, str], Any], tuple[int, str, bytes]]


def json_reply(obj: Any, status: int = 200) -> tuple[int, str, bytes]:
    """A JSON response triple."""
    return status, "application/json", json.dumps(obj).encode()


def text_reply(text: str, status: int = 200) -> tuple[int, str, bytes]:
    """A text/plain response triple."""
    return status, "text/plain; charset=utf-8", text.encode()


def serve(addr: str, get_routes: dict[str, Handler], post_routes: dict[str, Handler] | None = None,
          name: str = "http", check: Callable[[Any, str], tuple[int, str, bytes] | None] | None = None,
          tls_files: tuple[str, str] | None = None) -> Any:
    """Bind `addr` and serve the routes in a daemon thread; return the server (call .shutdown() to stop).

    Unknown path -> 404 text; a known path with another method -> 405 text. Handlers get (query, json_body).
    `check(headers, peer "ip:port")`, when given, runs before routing: a reply triple refuses the request.
    `tls_files` = (cert PEM, key PEM): serve TLS only (a plain client's connection is dropped after a failed
    handshake). Raises OSError/ssl.SSLError if the files cannot be loaded.
    """
    import http.server   # imported here, not at the top: the CLI clients start faster without them
    import threading
    import urllib.parse

    tls_ctx = None
    if tls_files is not None:
        import ssl
        tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_ctx.load_cert_chain(tls_files[0], tls_files[1])

    class _Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 64

        def finish_request(self, request: Any, client_address: Any) -> None:
            if tls_ctx is None:
                super().finish_request(request, client_address)
                return
            request.settimeout(10.0)   # the TLS handshake runs in the request thread, never in the accept loop
            try:
                wrapped = tls_ctx.wrap_socket(request, server_side=True)
            except OSError:
                return
            wrapped.settimeout(None)
            try:
                super().finish_request(wrapped, client_address)
            finally:
                wrapped.close()

    post_routes = post_routes or {}
    known = set(get_routes) | set(post_routes)

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"
        server_version = "databend-standin"
        sys_version = ""

        def log_message(self, fmt: str, *args: Any) -> None:  # no access log on stderr
            pass

        def _send(self, status: int, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _dispatch(self, method: str) -> None:
            if check is not None:
                refusal = check(self.headers, "%s:%d" % self.client_address[:2])
                if refusal is not None:
                    self._send(*refusal)
                    return
            url = urllib.parse.urlsplit(self.path)
            routes = get_routes if method == "GET" else post_routes if method == "POST" else {}
            handler = routes.get(url.path)
            if handler is None:
                if url.path in known:
                    self._send(*text_reply("method not allowed", 405))
                else:
                    self._send(*text_reply(f"not found: {url.path}", 404))
                return
            query = dict(urllib.parse.parse_qsl(url.query))
            body = None
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError:
                    self._send(*text_reply("body is not JSON", 400))
                    return
            try:
                reply = handler(query, body)
            except Exception as e:  # a bug in a handler must not kill the server thread silently
                reply = text_reply(f"internal error: {type(e).__name__}: {e}", 500)
            try:
                self._send(*reply)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_PATCH(self) -> None:
            self._dispatch("PATCH")

    host, port = split_addr(addr)
    server = _Server((host, port), H)
    threading.Thread(target=server.serve_forever, name=f"{name}-{addr}", daemon=True).start()
    return server


def client_tls(ca_file: str, server_name: str) -> Callable[[socket.socket], socket.socket]:
    """A `tls=` wrapper for request(): verify the server against `ca_file` for `server_name` (a query node's
    `rpc_tls_meta_server_root_ca_cert` / `rpc_tls_meta_service_domain_name`). Raises OSError if unreadable."""
    import ssl
    ctx = ssl.create_default_context(cafile=ca_file)
    return lambda sock: ctx.wrap_socket(sock, server_hostname=server_name)


def is_port_open(addr: str, timeout: float = 0.5) -> bool:
    """True if a TCP connection to `addr` succeeds."""
    try:
        with socket.create_connection(split_addr(addr), timeout=timeout):
            return True
    except OSError:
        return False
