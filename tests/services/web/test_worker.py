"""When the LAN worker considers a request to have arrived whole (and hands it to a thread)."""

from __future__ import annotations

import pytest

from services.web.worker import MAX_BUFFERED, request_complete

HEAD = b"POST /api/ingest HTTP/1.1\r\nHost: hub\r\n"


@pytest.mark.parametrize(("data", "complete"), [
    (b"", False),
    (b"GET /api/health HTTP/1.1\r\nHost: hub\r\n", False),  # the head is not finished
    (b"GET /api/health HTTP/1.1\r\nHost: hub\r\n\r\n", True),
    (HEAD + b"Content-Length: 10\r\n\r\n{\"a\": ", False),  # 6 of 10 body bytes
    (HEAD + b"content-length: 10\r\n\r\n{\"a\": 123}", True),  # header names are case-blind
    (HEAD + b"Content-Length: nope\r\n\r\n", True),  # gunicorn's parser answers 400
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\n", True),  # the thread reads the chunks
    # curl waits for "100 Continue" before it sends a body over 1 KiB: do not wait for the body
    (HEAD + b"Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n", True),
    (HEAD + b"Content-Length: 999999999\r\n\r\n" + b"x" * 10, False),  # waits for the buffer cap
    (HEAD + b"X: " + b"y" * MAX_BUFFERED, True),  # too big to wait for: the parser refuses it
])
def test_request_complete(data: bytes, complete: bool) -> None:
    assert request_complete(data) is complete
