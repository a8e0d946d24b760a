"""TLS pieces on their own: options, loading files, the member's name, and a session
whose member leg speaks TLS (relayed through the copy path, a real TLS server on the
other end of a TCP connection). Certificates are made with `openssl`."""
import hashlib
import os
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable

import pytest

from gateway import config as gwconfig
from gateway import tls as gwtls
from gateway.addresses import HostPort
from gateway.relay import End, Mode, Session, SpliceChannel
from gateway.tlsleg import (R_CERTIFICATE, R_NO_CERTIFICATE, R_TIMEOUT, TlsLeg,
                            failure_reason, server_name)
from tests.support import tls as pki_support
from tests.unit.test_relay import Driver, read_all, tcp_pair


def load(*argv: str) -> gwconfig.Config:
    return gwconfig.load(list(argv), {})


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return pki_support.ClusterPki(tmp_path_factory.mktemp("pki"))


# -- endpoints and options ---------------------------------------------------------
def test_an_https_endpoint_is_dialled_with_tls_and_keeps_its_scheme_in_its_label():
    c = load("--endpoints=https://etcd1:2379,https://[::1]:2380")
    assert c.endpoints == (HostPort("etcd1", 2379, True), HostPort("::1", 2380, True))
    assert str(c.endpoints[0]) == "https://etcd1:2379"


def test_an_http_endpoint_is_a_plain_relay():
    assert load("--endpoints=http://a:1").endpoints == (HostPort("a", 1),)


def test_an_unknown_scheme_is_refused():
    with pytest.raises(gwconfig.ConfigError, match="unknown scheme 'unix'"):
        load("--endpoints=unix://x")


def test_trusted_ca_file_is_the_default_cacert():
    opts = gwtls.options_from(load("--endpoints=https://a:1", "--trusted-ca-file=/ca.pem"))
    assert (opts.originate, opts.cacert, opts.cacert_option) == (True, "/ca.pem",
                                                                  "trusted-ca-file")
    opts = gwtls.options_from(load("--endpoints=https://a:1", "--trusted-ca-file=/ca.pem",
                                   "--cacert=/mine.pem"))
    assert (opts.cacert, opts.cacert_option) == ("/mine.pem", "cacert")


def test_no_tls_options_means_no_tls():
    opts = gwtls.options_from(load("--endpoints=a:1"))
    assert not opts.enabled and opts.files() == []


@pytest.mark.parametrize("argv, words", [
    (["--endpoints=https://a:1", "--cert=c.pem"], ["--cert", "needs --key"]),
    (["--endpoints=https://a:1", "--key=k.pem"], ["--key", "needs --cert"]),
    (["--cert-file=c.pem"], ["--cert-file", "needs --key-file"]),
    (["--cert=c.pem", "--key=k.pem"], ["--cert", "no member is dialled with TLS"]),
    (["--cacert=ca.pem"], ["--cacert", "no member is dialled with TLS"]),
    (["--cert-file=c", "--key-file=k", "--client-cert-auth"],
     ["--client-cert-auth", "--client-ca-file"]),
    (["--client-cert-auth", "--client-ca-file=ca"], ["--client-cert-auth", "--cert-file"]),
    (["--cert-file=c", "--key-file=k", "--client-ca-file=ca"],
     ["--client-ca-file", "needs --client-cert-auth"]),
])
def test_combinations_that_make_no_sense_are_refused_naming_the_option(argv, words):
    with pytest.raises(gwconfig.ConfigError) as err:
        gwtls.options_from(load("--endpoints=a:1", *argv) if "https" not in argv[0]
                           else load(*argv))
    for word in words:
        assert word in str(err.value)


def test_discovery_srv_tls_cannot_mix_with_insecure_discovery():
    with pytest.raises(gwconfig.ConfigError, match="--discovery-srv-tls"):
        load("--discovery-srv=example.test", "--discovery-srv-tls", "--insecure-discovery")


def test_discovery_srv_tls_originates():
    opts = gwtls.options_from(load("--discovery-srv=example.test", "--discovery-srv-tls"))
    assert opts.originate


@pytest.mark.parametrize("label, name", [
    ("https://etcd1.example:2379", "etcd1.example"),
    ("127.0.0.1:2379", "127.0.0.1"),
    ("https://[::1]:2379", "::1"),
    ("b1.example.test:2379", "b1.example.test"),
])
def test_the_member_name_checked_is_the_host_written(label, name):
    assert server_name(label) == name


# -- loading files -----------------------------------------------------------------
def _options(pki, **kw) -> gwtls.TlsOptions:
    base = dict(originate=True, cacert=pki.ca.cert, cacert_option="cacert",
                cert=pki.client.cert, key=pki.client.key, cert_file=pki.gateway.cert,
                key_file=pki.gateway.key, client_cert_auth=True,
                client_ca_file=pki.ca.cert)
    base.update(kw)
    return gwtls.TlsOptions(**base)


def test_load_builds_member_contexts_per_protocol_and_a_server_context(pki):
    material = gwtls.load(_options(pki))
    assert set(material.member) == {"h2", "http/1.1"}
    assert material.server is not None and material.server.verify_mode == ssl.CERT_REQUIRED


def test_each_certificate_expiry_is_read_as_openssl_gives_it(pki):
    material = gwtls.load(_options(pki))
    by_option = {c.option: c for c in material.certificates}
    assert set(by_option) == {"cert", "cacert", "cert-file", "client-ca-file"}
    info = by_option["cert-file"]
    assert info.serial == pki_support.serial_of(pki.gateway.cert)
    assert 86400 < info.not_after - time.time() <= 2 * 86400


def test_a_key_that_does_not_match_is_named(pki):
    with pytest.raises(gwconfig.ConfigError, match="option --key-file: .* does not match"):
        gwtls.load(_options(pki, key_file=pki.client.key))


def test_an_expired_certificate_is_refused(pki, tmp_path):
    old = pki_support.make_cert(pki.ca, tmp_path, "old", ips=("127.0.0.1",), days=-1)
    with pytest.raises(gwconfig.ConfigError, match="option --cert-file: .* expired on"):
        gwtls.load(_options(pki, cert_file=old.cert, key_file=old.key))


def test_a_missing_file_is_named_with_its_option(pki, tmp_path):
    with pytest.raises(gwconfig.ConfigError,
                       match="option --client-ca-file: cannot read .*No such file"):
        gwtls.load(_options(pki, client_ca_file=str(tmp_path / "nope.pem")))


def test_a_file_that_is_not_pem_is_named(pki, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("hello\n")
    with pytest.raises(gwconfig.ConfigError, match="option --cacert: .* no usable CA"):
        gwtls.load(_options(pki, cacert=str(bad)))


def test_the_signature_changes_when_a_file_is_replaced(pki, tmp_path):
    cert = tmp_path / "c.pem"
    shutil.copy(pki.gateway.cert, cert)
    opts = _options(pki, cert_file=str(cert))
    before = gwtls.signature(opts)
    assert gwtls.signature(opts) == before
    shutil.copy(pki.member.cert, tmp_path / "new.pem")
    os.replace(tmp_path / "new.pem", cert)
    assert gwtls.signature(opts) != before


# -- failure reasons ---------------------------------------------------------------
def test_failure_reasons():
    assert failure_reason(None) == R_TIMEOUT
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    assert failure_reason(verify) == R_CERTIFICATE
    no_cert = ssl.SSLError(1, "[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE]")
    no_cert.reason = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert failure_reason(no_cert) == R_NO_CERTIFICATE


# -- a session with a TLS member leg -----------------------------------------------
class TlsEchoOnce:
    """One TLS server connection on a TCP socket: echo until EOF, then close_notify
    and close. Runs in a thread with blocking I/O. Like Go's servers (etcd), it reads
    a FIN at a record boundary as the end: the gateway half-closes a TLS leg with a
    FIN while the other direction still flows (see TlsLeg.shutdown_write)."""

    def __init__(self, sock: socket.socket, cert: pki_support.CertKey):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
        ctx.load_cert_chain(cert.cert, cert.key)
        self.sock, self.ctx = sock, ctx
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sock.settimeout(10)
            tls = self.ctx.wrap_socket(self.sock, server_side=True)
            while True:
                data = tls.recv(65536)
                if not data:
                    break
                tls.sendall(data)
            try:
                tls.unwrap()
            except OSError:
                pass  # the gateway closed as soon as both directions were done
            tls.close()
        except (OSError, ssl.SSLError) as exc:
            self.error = exc


def _member_leg(pki, upstream: socket.socket, strict_eof: bool = False) -> TlsLeg:
    """The gateway's TLS leg to a member on `upstream`, handshake done. `strict_eof`:
    without OP_IGNORE_UNEXPECTED_EOF, so OpenSSL reports a FIN without close_notify
    as an error, as OpenSSL 1.1 always does."""
    ctx = gwtls.load(_options(pki, cert_file="", key_file="", client_cert_auth=False,
                              client_ca_file="")).member_context("http/1.1")
    if strict_eof:
        ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    upstream.setblocking(False)
    leg = TlsLeg.client(ctx, upstream, "127.0.0.1")
    deadline = time.monotonic() + 10
    while leg.handshake():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    return leg


def test_a_tls_member_leg_relays_bytes_intact_both_ways_and_carries_eof(pki):
    app, gw_client = tcp_pair()
    gw_upstream, member = tcp_pair()
    server = TlsEchoOnce(member, pki.member)
    leg = _member_leg(pki, gw_upstream)
    drv = Driver("splice")  # the pool would lend pipes: a TLS direction must not use one
    lent = []
    get = drv.pool.get
    drv.pool.get = lambda: lent.append(1) or get()  # type: ignore[method-assign]
    try:
        gw_client.setblocking(False)
        session = Session(gw_client.detach(), leg.fd, drv.pool, drv.sync, utls=leg)
        drv.live.append(session)
        drv.sync(session)
        payload = os.urandom(3 * 1024 * 1024)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(read_all(app)), daemon=True)
        reader.start()
        sender = threading.Thread(target=lambda: (app.sendall(payload),
                                                  app.shutdown(socket.SHUT_WR)), daemon=True)
        sender.start()
        drv.run_until(lambda: bool(session.ended), timeout=30)
        reader.join(10)
        assert session.ended is End.CLOSED
        assert len(got[0]) == len(payload)
        assert hashlib.sha256(got[0]).digest() == hashlib.sha256(payload).digest()
        assert not lent  # copy buffers only
        assert not any(isinstance(c, SpliceChannel) for c in drv.pool._buffers)
        server.thread.join(10)
        assert server.error is None
    finally:
        drv.close()
        app.close()


def _tls_session(pki, drv: Driver, upstream: socket.socket | TlsLeg, client: socket.socket):
    """A session relaying `client` to a member over a TLS leg on `upstream` (or
    that leg, made already)."""
    leg = upstream if isinstance(upstream, TlsLeg) else _member_leg(pki, upstream)
    client.setblocking(False)
    session = Session(client.detach(), leg.fd, drv.pool, drv.sync, utls=leg)
    drv.live.append(session)
    drv.sync(session)
    return session


def test_small_tls_messages_relayed_whole_borrow_no_buffer_and_change_no_registration(pki):
    app, gw_client = tcp_pair()
    gw_upstream, member = tcp_pair()
    server = TlsEchoOnce(member, pki.member)
    drv = Driver("splice")
    try:
        session = _tls_session(pki, drv, gw_upstream, gw_client)
        borrowed, synced = [], []
        get_buffer = drv.pool.get_buffer
        drv.pool.get_buffer = lambda: borrowed.append(1) or get_buffer()  # type: ignore[method-assign]
        session.sync = lambda s: (synced.append(s), drv.sync(s))  # type: ignore[assignment]
        app.settimeout(5)
        for i in range(10):
            app.sendall(b"range key%d" % i)
            drv.run_until(lambda total=(i + 1) * 10: session.down.moved == total)
            assert app.recv(64) == b"range key%d" % i  # through the TLS member and back
        assert borrowed == [] and synced == []
        assert session.up.mode is Mode.TLS and session.down.mode is Mode.TLS
    finally:
        drv.close()
        app.close()
        server.thread.join(10)


def test_an_error_behind_small_tls_bytes_ends_the_session_once_they_are_relayed(pki):
    payload = os.urandom(40 * 1024)  # less than a buffer: the short path reads it
    sent, done = threading.Event(), threading.Event()

    def send(tls: ssl.SSLSocket) -> None:
        tls.sendall(payload)
        with socket.socket(fileno=os.dup(tls.fileno())) as raw:
            raw.sendall(b"\x17\x03\x03\x00\x20" + os.urandom(32))  # does not decrypt
        sent.set()
        done.wait(10)  # and stays open, silent: no later event to raise the error at

    app, gw_client = tcp_pair()
    gw_upstream, member = tcp_pair()
    thread = threading.Thread(target=_serve_once, args=(pki, member, send), daemon=True)
    thread.start()
    drv = Driver("splice")
    try:
        leg = _member_leg(pki, gw_upstream)
        assert sent.wait(10)
        time.sleep(0.2)  # all of it waits in the gateway's socket: one read meets the error
        session = _tls_session(pki, drv, leg, gw_client)
        drv.run_until(lambda: bool(session.ended), timeout=3)
        assert session.ended is End.RESET
        assert session.down.moved == len(payload)  # relayed before the reset
    finally:
        done.set()
        drv.close()
        app.close()
        thread.join(10)


class _Buffer:
    """What read_into fills: a CopyChannel's view, size and start."""

    def __init__(self, size: int = 256 * 1024):
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.size = size
        self.start = 0


def _member_sending(pki, send: Callable[[ssl.SSLSocket], None], strict_eof: bool = False):
    """(gateway's leg, server thread): a TLS member that runs `send` on its end of
    the connection, then waits; all it sent is in the gateway's socket on return."""
    gw_upstream, member = tcp_pair()
    sent = threading.Event()

    def then_wait(tls: ssl.SSLSocket) -> None:
        send(tls)
        sent.set()
        time.sleep(1)

    server = threading.Thread(target=_serve_once, args=(pki, member, then_wait), daemon=True)
    server.start()
    leg = _member_leg(pki, gw_upstream, strict_eof)
    assert sent.wait(10)
    time.sleep(0.2)
    return leg, server


def _serve_once(pki, member: socket.socket, send: Callable[[ssl.SSLSocket], None]) -> None:
    """A TLS member on `member` (blocking, in a thread): handshake, run `send`, close."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.member.cert, pki.member.key)
    member.settimeout(10)
    with ctx.wrap_socket(member, server_side=True) as tls:
        send(tls)


def _records(*records: bytes) -> Callable[[ssl.SSLSocket], None]:
    """What a member sends: each of `records` as its own TLS record."""
    def send(tls: ssl.SSLSocket) -> None:
        for record in records:
            tls.sendall(record)
    return send


def test_bytes_read_before_a_bad_record_are_returned_and_the_error_raised_next(pki):
    payload = os.urandom(40 * 1024)

    def send(tls: ssl.SSLSocket) -> None:
        tls.sendall(payload)
        with socket.socket(fileno=os.dup(tls.fileno())) as raw:
            # an application-data record that does not decrypt, right behind
            raw.sendall(b"\x17\x03\x03\x00\x20" + os.urandom(32))

    leg, server = _member_sending(pki, send)
    buf = _Buffer()
    try:
        got = leg.read_into(buf)
        assert got == len(payload) and bytes(buf.view[:got]) == payload
        with pytest.raises(ssl.SSLError):
            leg.read_into(buf)
    finally:
        leg.close()
        server.join(10)


class _CountingReads:
    """The leg's OpenSSL connection (the SSLSocket's `_sslobj`, which the leg reads
    through), with its reads counted (a spy: every call goes to the real object)."""

    def __init__(self, sslobj):
        self._sslobj = sslobj
        self.reads = 0

    def read(self, *args):
        self.reads += 1
        return self._sslobj.read(*args)

    def __getattr__(self, name):
        return getattr(self._sslobj, name)


def test_a_short_record_is_returned_after_one_read(pki):
    leg, server = _member_sending(pki, _records(b"m" * 64))
    spy = leg.sock._sslobj = _CountingReads(leg.sock._sslobj)  # type: ignore[attr-defined]
    try:
        buf = _Buffer()
        assert leg.read_into(buf) == 64
        assert spy.reads == 1  # no second read to learn that nothing more is there
    finally:
        leg.close()
        server.join(10)


def _last_words_then_a_bare_fin(tls: ssl.SSLSocket) -> None:
    tls.sendall(b"last words")
    with socket.socket(fileno=os.dup(tls.fileno())) as raw:
        raw.shutdown(socket.SHUT_WR)  # a FIN without close_notify


@pytest.mark.parametrize("strict_eof", [False, True], ids=["openssl-3", "openssl-1.1"])
def test_a_fin_without_close_notify_reads_as_the_end_of_the_stream(pki, strict_eof):
    leg, server = _member_sending(pki, _last_words_then_a_bare_fin, strict_eof)
    try:
        buf = _Buffer()
        assert bytes(buf.view[:leg.read_into(buf)]) == b"last words"
        assert leg.read_into(buf) == 0  # an EOF, not an error that would reset the client
    finally:
        leg.close()
        server.join(10)


def test_short_records_that_came_together_are_read_in_one_call(pki):
    leg, server = _member_sending(pki, _records(b"a" * 64, b"b" * 100))
    try:
        buf = _Buffer()
        assert bytes(buf.view[:leg.read_into(buf)]) == b"a" * 64 + b"b" * 100
    finally:
        leg.close()
        server.join(10)


def test_a_member_leg_that_cannot_be_made_closes_its_connection(pki):
    ctx = gwtls.load(_options(pki, cert_file="", key_file="", client_cert_auth=False,
                              client_ca_file="")).member_context("http/1.1")
    gw_upstream, member = tcp_pair()
    gw_upstream.setblocking(False)
    try:
        with pytest.raises(ValueError):  # a member context checks the name: none given
            TlsLeg.client(ctx, gw_upstream, "")
        assert gw_upstream.fileno() == -1  # the leg took the fd
        member.settimeout(5)
        assert member.recv(1) == b""  # and closed it
    finally:
        member.close()


def test_full_records_are_read_on_to_fill_the_buffer(pki):
    payload = os.urandom(48 * 1024)  # three records of the largest size
    leg, server = _member_sending(pki, _records(payload))
    try:
        buf = _Buffer()
        assert leg.read_into(buf) == len(payload)
    finally:
        leg.close()
        server.join(10)
