"""A loopback HTTP/1.1 server that answers with bytes a test scripts, read by read.

For wire-level cases a real server produces only sometimes: a character or a
CRLF split across network reads, unescaped line separators in JSON, another
server's way of reporting an error mid-stream, a redirect.  Each piece of
``pieces`` goes out as its own chunk of a chunked response and is flushed,
with a pause between, so the client reads them separately.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["ChunkedAnswers", "scripted_server", "serving"]


@contextlib.contextmanager
def scripted_server(
    pieces: Sequence[bytes],
    *,
    status: int = 200,
    content_type: str = "application/x-ndjson",
    headers: Sequence[tuple[str, str]] = (),
    pause: float = 0.01,
    connections: list[object] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Iterator[str]:
    """Serve ``pieces`` to every GET and POST on 127.0.0.1; yields the base URL.

    ``pause`` 0 sends the whole body in one write, its end included.
    ``connections``: a list that gets one item per TCP connection accepted.
    ``tls``: a server context to serve HTTPS with.
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            if connections is not None:
                connections.append(self.client_address)

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            chunks = [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces]
            with contextlib.suppress(OSError):
                if not pause:  # all at once, the body's end with the last piece (as servers send it)
                    self.wfile.write(b"".join(chunks) + b"0\r\n\r\n")
                    self.wfile.flush()
                    return
                for chunk in chunks:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    time.sleep(pause)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        do_GET = do_POST = _answer

    with serving(Handler, tls=tls) as url:
        yield url


class ChunkedAnswers(BaseHTTPRequestHandler):
    """A quiet HTTP/1.1 handler whose answers a test writes as chunks (:meth:`begin`, :meth:`chunk`)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def begin(self, content_type: str) -> None:
        """Read the request's body and start a 200 answer in chunked encoding."""
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler], *, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 (a free port) in a thread; yields the base URL (HTTPS with ``tls``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"{'http' if tls is None else 'https'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
