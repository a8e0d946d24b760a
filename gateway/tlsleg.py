"""One TLS leg of a connection: a non-blocking SSLSocket seen as a byte source/sink.

design: the relay (relay.py) moves bytes through channels between fds; a leg that
speaks TLS cannot use splice (no kTLS here), so a session with a TLS leg moves its
bytes through a copy channel's reused buffer, and this class turns that buffer into
TLS records: `read_into` fills it with the whole records the socket holds (never less
than a record's room per read, so OpenSSL is left holding no decrypted bytes the
poller could not announce; after a short record it reads on only if the socket has
more, FIONREAD, rather than learn it from a failing read), `write_from` encrypts from
it. Both call the SSLSocket's `_sslobj` (the C object) directly: SSLSocket's
`recv_into` and `send` add two Python frames per record (closed, flag and buffer checks)
and turn a FIN without close_notify into 0, which `read_into` does itself (SSLEOFError).
"Nothing now" is
`BlockingIOError`, as for a plain socket, so the session's backpressure logic is the
same for both kinds of leg. An error met after some bytes in the same `read_into` is held
and raised at the next call, so those bytes are relayed first. A leg half-closes with a
bare FIN (see `shutdown_write`); a peer on OpenSSL 3 answers that with a fatal alert
after its last data, so an alert read once our FIN is out ends the peer's stream as an
EOF (the client gets every byte and a FIN), not a reset. The handshake is a step of
the caller's state machine: `handshake()` answers 0 (done) or the readiness it waits
for.

`failure_reason(exc)` sorts a failed handshake into a few stable reasons for metrics
(the full OpenSSL text goes to the debug log).
"""
from __future__ import annotations

import _socket
import socket
import ssl

from gateway.loop import READ, WRITE
from gateway.relay import LINGER_RESET, queued_bytes, shutdown_write

RECORD = 16384            # largest TLS plaintext record
_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)

# handshake failure reasons (metrics label values), in counter order
REASONS = ("certificate", "no-certificate", "protocol", "timeout", "closed", "other")
(R_CERTIFICATE, R_NO_CERTIFICATE, R_PROTOCOL, R_TIMEOUT, R_CLOSED, R_OTHER) = range(6)


class TlsLeg:
    """A connected, non-blocking socket wrapped in TLS; owns the socket."""
    __slots__ = ("sock", "fd", "_failure", "_fin_sent")

    def __init__(self, sock: ssl.SSLSocket):
        self.sock = sock
        self.fd = sock.fileno()
        self._failure: OSError | None = None  # met after bytes read: raised next call
        self._fin_sent = False

    @classmethod
    def client(cls, ctx: ssl.SSLContext, sock: _socket.socket, server_name: str) -> "TlsLeg":
        """The gateway dials a member: verify it as `server_name` (a name or an IP).
        The leg takes the socket's fd: `sock` is detached at once, and if the leg
        cannot be made its fd is closed before the error goes up (the caller drops its
        registration by number: the closed fd has left epoll). ssl wraps only a
        socket.socket, and the dial's is C-level (dial.py); SOCK_NONBLOCK in the type
        tells the new object the fd is non-blocking (else ssl would make it blocking,
        from the timeout a bare fd is given)."""
        family, proto = sock.family, sock.proto
        plain = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, proto,
                              sock.detach())
        try:
            return cls(ctx.wrap_socket(plain, server_side=False,
                                       do_handshake_on_connect=False,
                                       server_hostname=server_name))
        except BaseException:
            plain.close()  # nothing if ssl took the fd: it closed it when it failed
            raise

    @classmethod
    def server(cls, ctx: ssl.SSLContext, fd: int) -> "TlsLeg":
        """A client of the gateway (an accepted fd, now owned by the leg)."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        return cls(ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False))

    def handshake(self) -> int:
        """One step: 0 when done, else READ or WRITE (what to wait for). Raises
        ssl.SSLError/OSError when the handshake failed."""
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            return READ
        except ssl.SSLWantWriteError:
            return WRITE
        return 0

    @property
    def failed(self) -> bool:
        """An error is held back for the next `read_into` (bytes came before it)."""
        return self._failure is not None

    @property
    def protocol(self) -> str | None:
        """The ALPN protocol negotiated, if any."""
        return self.sock.selected_alpn_protocol()

    def read_into(self, chan) -> int:
        """Fill `chan` (a CopyChannel) with the whole records that are there; 0 at
        EOF; BlockingIOError when nothing is there. An error (ssl.SSLError, OSError)
        met after some bytes were read in the same call is raised at the next call:
        those bytes are returned first, so they are relayed before the session ends."""
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        view, size, queued, fd = chan.view, chan.size, queued_bytes, self.fd
        recv = self.sock._sslobj.read  # type: ignore[attr-defined]
        chan.start = 0
        got = 0
        eof = False
        while size - got >= RECORD:
            try:
                n = recv(size - got, view[got:])
            except _WANT:
                break
            except (ssl.SSLZeroReturnError,  # close_notify after ours: OpenSSL raises
                    ssl.SSLEOFError):  # a FIN without close_notify: SSLSocket's ragged EOF
                n = 0
            except OSError as exc:  # ssl.SSLError is one
                if self._fin_sent and _is_alert(exc):
                    eof = True  # the peer's answer to our bare FIN: it sent all it will
                    break
                if not got:
                    raise
                self._failure = exc
                break
            if n == 0:
                eof = True  # close_notify or a bare FIN: reported now or at the next call
                break
            got += n
            if n < RECORD and not queued(fd):
                # a record shorter than the largest, read whole (OpenSSL returns one
                # record per call and reads no further ahead; the loop's room of a
                # record leaves it holding nothing), and nothing else in the socket:
                # asking for more now would cost a failing recv and an SSLWantReadError
                # raised and caught, on every small message
                break
        if got:
            return got
        if eof:
            return 0
        raise BlockingIOError

    def write_from(self, chan, count: int) -> int:
        """Encrypt and send `count` bytes from `chan` at its start; BlockingIOError when
        the socket is full (OpenSSL keeps its place: retry with the same bytes)."""
        try:
            n = self.sock._sslobj.write(  # type: ignore[attr-defined]
                chan.view[chan.start:chan.start + count])
        except _WANT:
            raise BlockingIOError from None
        chan.start += n
        return n

    def shutdown_write(self, close_notify: bool) -> None:
        """Half-close: a FIN, after a close_notify when `close_notify` (only once
        nothing more is to be read from this leg: CPython's shutdown reads on to wait
        for the peer's close_notify, and OpenSSL drops application data it reads
        there). A peer reads a FIN at a record boundary as a clean end (Go does)."""
        if close_notify:
            try:
                self.sock._sslobj.shutdown()  # type: ignore[attr-defined]
            except (ssl.SSLError, OSError, AttributeError):
                pass
        shutdown_write(self.fd)  # on the fd: SSLSocket.shutdown() would drop the TLS state
        self._fin_sent = True

    def close(self, reset: bool = False) -> None:
        if reset:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            except OSError:
                pass
        self.sock.close()


def _is_alert(exc: OSError) -> bool:
    """A fatal alert the peer sent: OpenSSL 3 peers answer a FIN without close_notify
    with one ("decode error"), after the last of their data."""
    return isinstance(exc, ssl.SSLError) and "ALERT" in str(getattr(exc, "reason", "") or "")


def server_name(label: str) -> str:
    """The name a member's certificate must match: the host the operator wrote
    (`https://host:port`, or an SRV target `host:port`), without the port."""
    text = label.split("://", 1)[-1]
    if text.startswith("["):
        return text[1:text.index("]")]
    return text.rsplit(":", 1)[0] if ":" in text else text


def failure_reason(exc: BaseException | None) -> int:
    """The REASONS index for a failed handshake (None: it timed out)."""
    if exc is None:
        return R_TIMEOUT
    if isinstance(exc, ssl.SSLCertVerificationError):
        return R_CERTIFICATE
    if isinstance(exc, ssl.SSLEOFError) or isinstance(exc, (ConnectionError, EOFError)):
        return R_CLOSED
    if isinstance(exc, ssl.SSLError):
        reason = str(getattr(exc, "reason", None) or "")
        if "CERTIFICATE_REQUIRED" in reason or "PEER_DID_NOT_RETURN" in reason:
            return R_NO_CERTIFICATE
        if "CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
            return R_CERTIFICATE
        if ("VERSION" in reason or "PROTOCOL" in reason or "HTTP_REQUEST" in reason
                or "NO_SHARED_CIPHER" in reason or "RECORD" in reason):
            return R_PROTOCOL
    return R_OTHER


def describe_failure(exc: BaseException | None) -> str:
    if exc is None:
        return "timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(getattr(exc, "reason", None) or exc).lower().replace("_", " ")
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
