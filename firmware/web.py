"""A small HTTP/1.0 server side (one request per connection) and client over the HAL's sockets.

Why not a library: MicroPython's ``requests`` buffers whole bodies and has no server; this is the
few hundred bytes of parsing a probe needs, with hard limits everywhere (header size, body size,
time) so a slow or hostile client costs a bounded amount of RAM and time.
"""

import json

from .hal import Hal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_HEADER = 2048
MAX_REQUEST_BODY = 4096
REASONS = {200: "OK", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
           401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 422: "Unprocessable Entity", 500: "Internal Server Error",
           503: "Service Unavailable"}


class HttpError(Exception):
    """A request this probe refuses (server side) or a response it cannot use (client side):
    ``status`` and a message for the other end."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    def __init__(self, method: str, path: str, query: "dict[str, Any]",
                 headers: "dict[str, Any]", body: bytes) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body

    def json(self) -> "Any":
        """The body as JSON; ``HttpError(400)`` when it is not."""
        try:
            return json.loads(self.body)
        except ValueError:
            raise HttpError(400, "the body is not JSON") from None


def unquote(text: str) -> str:
    """Form and query decoding (``+`` and ``%XX``), as UTF-8."""
    text = text.replace("+", " ")
    if "%" not in text:
        return text
    out = bytearray()
    parts = text.split("%")
    out.extend(parts[0].encode())
    for part in parts[1:]:
        try:
            out.append(int(part[:2], 16))
            out.extend(part[2:].encode())
        except ValueError:
            out.extend(("%" + part).encode())
    return out.decode()


def parse_form(text: str) -> "dict[str, Any]":
    fields = {}
    for pair in text.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            fields[unquote(key)] = unquote(value)
    return fields


def _read_head(sock: "Any") -> "tuple[Any, ...]":
    """Read up to the blank line: ``(head text, bytes of the body already read)``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(512)
        if not chunk:
            raise HttpError(400, "connection closed before the end of the headers")
        data += chunk
        if len(data) > MAX_HEADER + 512:
            raise HttpError(413, "headers larger than %d bytes" % MAX_HEADER)
    head, _, rest = data.partition(b"\r\n\r\n")
    try:
        return head.decode(), rest
    except UnicodeError:
        raise HttpError(400, "headers are not UTF-8") from None


def _headers(lines: "list[Any]") -> "dict[str, Any]":
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def _length(headers: "dict[str, Any]") -> int:
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpError(400, "Content-Length is not a number") from None
    if length < 0:
        raise HttpError(400, "Content-Length is negative")
    return length


def read_request(sock: "Any") -> Request:
    head, body = _read_head(sock)
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise HttpError(400, "not an HTTP request line: %r" % lines[0][:60])
    method, target = parts[0], parts[1]
    path, _, query = target.partition("?")
    headers = _headers(lines[1:])
    length = _length(headers)
    if length > MAX_REQUEST_BODY:
        raise HttpError(413, "body of %d bytes; at most %d" % (length, MAX_REQUEST_BODY))
    while len(body) < length:
        chunk = sock.recv(min(1024, length - len(body)))
        if not chunk:
            raise HttpError(400, "connection closed before the end of the body")
        body += chunk
    return Request(method, path, parse_form(query), headers, body[:length])


def send_response(sock: "Any", status: int, body: "Any", ctype: str = "application/json",
                  extra: str = "") -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n" % (
        status, REASONS.get(status, "Status"), ctype, len(data), extra)
    sock.send(head.encode())
    view = memoryview(data)
    sent = 0
    while sent < len(data):  # MicroPython's send may take part of the buffer
        sent += sock.send(view[sent:])


def split_url(url: str) -> "tuple[Any, ...]":
    """``http://host[:port]/path`` → ``(host, port, path)``; ``ValueError`` for anything else."""
    if not url.startswith("http://"):
        raise ValueError("only http:// URLs are supported, got %r" % url[:60])
    rest = url[7:]
    hostport, slash, path = rest.partition("/")
    host, colon, port = hostport.partition(":")
    if not host:
        raise ValueError("no host in %r" % url[:60])
    try:
        number = int(port) if colon else 80
    except ValueError:
        raise ValueError("bad port in %r" % url[:60]) from None
    return host, number, slash + path if slash else "/"


class Response:
    def __init__(self, status: int, headers: "dict[str, Any]", body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> "Any":
        try:
            return json.loads(self.body)
        except ValueError:
            raise HttpError(self.status, "the answer is not JSON: %r" % self.body[:60]) from None


def request(hal: Hal, method: str, url: str, body: "Any" = None,
            headers: "dict[str, Any] | None" = None, *, timeout_s: float = 3.0,
            max_body: int = 16384, sink: "Any" = None) -> Response:
    """One HTTP exchange. ``body``: a dict (sent as JSON) or bytes. ``sink``: a callable that
    takes the response body chunk by chunk instead of keeping it (OTA images). ``OSError`` when
    the server cannot be reached, ``HttpError`` for an answer larger than ``max_body``."""
    host, port, path = split_url(url)
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = ["%s %s HTTP/1.0" % (method, path), "Host: %s:%d" % (host, port),
             "Connection: close", "Content-Length: %d" % len(data)]
    if body is not None and not isinstance(body, bytes):
        lines.append("Content-Type: application/json")
    for name, value in (headers or {}).items():
        lines.append("%s: %s" % (name, value))
    sock = hal.connect(host, port, timeout_s)
    try:
        sock.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            sent += sock.send(view[sent:])
        head, rest = _read_head(sock)
        status_line, _, header_text = head.partition("\r\n")
        try:
            status = int(status_line.split(" ")[1])
        except (IndexError, ValueError):
            raise HttpError(502, "not an HTTP status line: %r" % status_line[:60]) from None
        resp_headers = _headers(header_text.split("\r\n"))
        if sink is not None:
            if rest:
                sink(rest)
            while True:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                sink(chunk)
            return Response(status, resp_headers, b"")
        buf = rest
        while len(buf) <= max_body:
            chunk = sock.recv(1024)
            if not chunk:
                break
            buf += chunk
        if len(buf) > max_body:
            raise HttpError(413, "an answer larger than %d bytes from %s" % (max_body, url[:60]))
        return Response(status, resp_headers, buf)
    finally:
        sock.close()
