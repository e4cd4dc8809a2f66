"""Downloads bounded by one deadline for the whole transfer, shared by CIFAR-10's download and
`bench weights fetch`: a mirror that trickles (headers, redirects or body a byte at a time) must
not hang a run, and urllib's timeout bounds only each single wait."""
from __future__ import annotations

import threading
import time
import urllib.request
from typing import Any, Iterator

DOWNLOAD_DEADLINE_S = 1800.0  # for a whole transfer: a mirror that trickles must not hang a run


class TooSlow(Exception):
    """The transfer was not complete at its deadline; the caller words the message."""


def open_within(url: str, timeout: float, deadline: float) -> Any:
    """urlopen, but given up at DEADLINE (monotonic) even if the server sends its headers (or a chain
    of redirects) a byte at a time: each wait is bounded by TIMEOUT, their sum is not. The request
    runs on a daemon thread; one given up on is abandoned and ends with its socket's timeout."""
    box: dict = {}

    def fetch() -> None:
        try:
            box["resp"] = urllib.request.urlopen(url, timeout=timeout)
        except BaseException as e:  # handed to the caller
            box["error"] = e

    thread = threading.Thread(target=fetch, name="bench-download", daemon=True)
    thread.start()
    thread.join(max(deadline - time.monotonic(), 0))
    if thread.is_alive():
        raise TooSlow()
    if "error" in box:
        raise box["error"]
    return box["resp"]


def chunks_within(resp: Any, deadline: float) -> Iterator[bytes]:
    """RESP's body as it arrives (read1: what has come, so a slow body still sees the deadline),
    TooSlow once DEADLINE (monotonic) has passed after a chunk was handled."""
    read = getattr(resp, "read1", resp.read)
    while chunk := read(1 << 20):
        yield chunk
        if time.monotonic() > deadline:
            raise TooSlow()
