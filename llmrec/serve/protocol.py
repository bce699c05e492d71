"""The HTTP/1.1 protocol ``llmrec serve`` gives uvicorn: uvicorn's own, with a lingering close.

uvicorn closes a connection at once after some answers: the 400 to a request it cannot parse (a head over h11's
size limit, a bad Content-Length), a 500, any answer to a request that asked for ``Connection: close``. When
the client is still sending (the body of that request), closing a socket with unread bytes makes the kernel
send a TCP reset instead of a FIN, and discard what it had not sent yet: the client's next write fails with
"broken pipe" or "connection reset", and many clients then lose the answer that was already on its way (RFC
9112, section 9.6). So here, as nginx's ``lingering_close`` does, a close first sends the answer and a FIN
(``write_eof``), then reads and drops whatever the client still sends until it closes its side or
``LINGER_SECONDS`` pass, and only then closes the socket. Idle connections closed by a graceful shutdown close
at once (nothing of theirs is unread, and shutdown is not held up).

    uvicorn.Config(app, http=LingeringHTTPProtocol, ...)   # what `llmrec serve` does
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

#: at most this long a closing connection keeps reading (and dropping) what its client still sends
LINGER_SECONDS = 5.0


class LingeringTransport:
    """A transport whose ``close()`` is a lingering close; everything else goes to the real transport."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, linger: float) -> None:
        self.transport = transport
        self.loop = loop
        self.linger = linger
        self.lingering = False  # FIN sent, reading and dropping until the client closes or the time is up
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self.transport.is_closing()

    def close(self) -> None:
        t = self.transport
        if self.lingering or t.is_closing():
            return
        if self.linger <= 0 or not t.can_write_eof():  # TLS cannot half-close: close as uvicorn would
            t.close()
            return
        self.lingering = True
        try:
            t.write_eof()  # the answer already written, then a FIN
            t.resume_reading()  # flow control may have paused reading: drain what the client still sends
        except (OSError, RuntimeError):
            t.close()
            return
        self._timer = self.loop.call_later(self.linger, t.close)

    def abort(self) -> None:
        self.cancel_timer()
        self.transport.abort()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class LingeringHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP/1.1 protocol (h11, or httptools when installed) over a :class:`LingeringTransport`."""

    linger_seconds = LINGER_SECONDS

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(LingeringTransport(transport, self.loop, self.linger_seconds))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:  # the answer is sent and the connection is closing: drop the rest
            return
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport.cancel_timer()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:  # idle: close now, shutdown waits for nothing
            self.transport.linger = 0
        super().shutdown()
