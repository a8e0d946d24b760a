"""TLS material: the TLS options' files, checked and loaded into ssl contexts.

design: `TlsOptions` is the value the options describe (which files, which roles);
`load(options)` reads every file once and returns a `Material` (the contexts and what
the certificates say) or raises ConfigError with one line naming the option, the file
and the problem: missing, unreadable or not a regular file (OpenSSL's blocking open of
a FIFO would hang the caller), not PEM, a key that does not match its
certificate, an expired certificate. The master loads at start (before anything binds)
and on SIGHUP or when `signature()` (the files' inode, size and mtime) changes; a
failed load keeps the material in use. Workers receive the master's material through
fork and load again themselves when the master bumps the table's TLS generation (see
worker.py), so open connections keep their session and only new ones see new files.

Two roles, both optional:
- origination (members dialled with TLS): `--cacert` (default `--trusted-ca-file`, then
  the system store) verifies the member and its name; `--cert`/`--key` is the client
  certificate. One context per ALPN protocol: etcd serves gRPC only to clients that
  negotiated `h2` and HTTP/1.1 to the others, so the member leg offers what the client
  speaks (see worker.py);
- termination (clients speak TLS to the gateway): `--cert-file`/`--key-file`, and with
  `--client-cert-auth` a client certificate signed by `--client-ca-file`. The server
  prefers `http/1.1` over `h2` when a client offers both (curl), so HTTP clients keep
  reaching etcd's HTTP handlers; gRPC offers only `h2`.
"""
from __future__ import annotations

import os
import ssl
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Config, ConfigError

H2, HTTP11 = "h2", "http/1.1"
PROTOCOLS = (H2, HTTP11)
SERVER_ALPN = [HTTP11, H2]


@dataclass(frozen=True)
class TlsOptions:
    originate: bool          # members are dialled with TLS
    cacert: str              # CA bundle for members; "" = the system store
    cacert_option: str       # the option that named it (cacert or trusted-ca-file)
    cert: str                # client certificate for members
    key: str
    cert_file: str           # serving certificate (termination)
    key_file: str
    client_cert_auth: bool
    client_ca_file: str

    @property
    def terminate(self) -> bool:
        return bool(self.cert_file)

    @property
    def enabled(self) -> bool:
        return self.originate or self.terminate

    def files(self) -> list[tuple[str, str]]:
        """(option, path) of every file the material is read from."""
        out = []
        if self.originate:
            out += [(self.cacert_option, self.cacert), ("cert", self.cert), ("key", self.key)]
        if self.terminate:
            out += [("cert-file", self.cert_file), ("key-file", self.key_file),
                    ("client-ca-file", self.client_ca_file)]
        return [(option, path) for option, path in out if path]


NO_TLS = TlsOptions(False, "", "cacert", "", "", "", "", False, "")


def options_from(config: Config) -> TlsOptions:
    """The TLS options of `config`, with the combinations that make no sense refused."""
    originate = (config.discovery_srv_tls if config.discovery_srv
                 else any(hp.tls for hp in config.endpoints))
    cacert, cacert_option = config.cacert, "cacert"
    if not cacert and config.trusted_ca_file:
        cacert, cacert_option = config.trusted_ca_file, "trusted-ca-file"
    opts = TlsOptions(originate, cacert, cacert_option, config.cert, config.key,
                      config.cert_file, config.key_file, config.client_cert_auth,
                      config.client_ca_file)
    _check_pairs(opts, config)
    return opts


def _check_pairs(o: TlsOptions, config: Config) -> None:
    for a, b, va, vb in (("cert", "key", o.cert, o.key),
                         ("cert-file", "key-file", o.cert_file, o.key_file)):
        if va and not vb:
            raise ConfigError(f"option --{a}: {va!r} needs --{b} (its private key)")
        if vb and not va:
            raise ConfigError(f"option --{b}: {vb!r} needs --{a} (its certificate)")
    if (o.cert or config.cacert) and not o.originate:
        name = "cert" if o.cert else "cacert"
        raise ConfigError(f"option --{name}: no member is dialled with TLS (give "
                          "https:// endpoints, or --discovery-srv-tls)")
    if o.client_cert_auth and not o.client_ca_file:
        raise ConfigError("option --client-cert-auth: needs --client-ca-file (the CA "
                          "that signs client certificates)")
    if o.client_ca_file and not o.client_cert_auth:
        raise ConfigError(f"option --client-ca-file: {o.client_ca_file!r} needs "
                          "--client-cert-auth")
    if o.client_cert_auth and not o.cert_file:
        raise ConfigError("option --client-cert-auth: needs --cert-file and --key-file "
                          "(the listener must speak TLS)")


@dataclass(frozen=True)
class CertInfo:
    """One loaded certificate, for metrics and `etcd-gatewayd status`."""
    option: str
    path: str
    subject: str
    serial: str
    not_after: float      # epoch seconds

    def as_json(self) -> dict[str, Any]:
        return {"option": self.option, "file": self.path, "subject": self.subject,
                "serial": self.serial, "not_after": self.not_after}


@dataclass
class Material:
    options: TlsOptions
    member: dict[str, ssl.SSLContext] = field(default_factory=dict)   # by ALPN protocol
    server: ssl.SSLContext | None = None
    certificates: tuple[CertInfo, ...] = ()

    def member_context(self, protocol: str) -> ssl.SSLContext:
        return self.member[protocol]


def load(options: TlsOptions, now: float | None = None) -> Material:
    """Read every file and build the contexts; ConfigError (one line) on any problem."""
    material = Material(options)
    if not options.enabled:
        return material
    now = time.time() if now is None else now
    for option, path in options.files():
        _readable(option, path)
    certs: list[CertInfo] = []
    if options.originate:
        for protocol in PROTOCOLS:
            ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT)
            _load_cas(ctx, options.cacert_option, options.cacert)
            if options.cert:
                _load_pair(ctx, ("cert", options.cert), ("key", options.key), now)
            ctx.set_alpn_protocols([protocol])
            material.member[protocol] = ctx
        if options.cert:
            certs.append(_leaf_info("cert", options.cert, now))
        if options.cacert:
            certs += _ca_infos(options.cacert_option, options.cacert)
    if options.terminate:
        ctx = _base_context(ssl.PROTOCOL_TLS_SERVER)
        _load_pair(ctx, ("cert-file", options.cert_file), ("key-file", options.key_file), now)
        if options.client_cert_auth:
            _load_cas(ctx, "client-ca-file", options.client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(SERVER_ALPN)
        material.server = ctx
        certs.append(_leaf_info("cert-file", options.cert_file, now))
        if options.client_ca_file:
            certs += _ca_infos("client-ca-file", options.client_ca_file)
    material.certificates = tuple(certs)
    return material


def signature(options: TlsOptions) -> tuple:
    """What changes when a file is replaced or rewritten (cheap: stat only)."""
    out: list[tuple] = []
    for _, path in options.files():
        try:
            st = os.stat(path)
        except OSError as exc:
            out.append((path, exc.errno))
        else:
            out.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


# -- helpers -------------------------------------------------------------------------
def _base_context(protocol: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # a peer's FIN at a record boundary is the end of its stream, as Go reads it (the
    # gateway half-closes a TLS leg that way too: see TlsLeg.shutdown_write)
    ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    return ctx


def _readable(option: str, path: str) -> None:
    """Refuse a file that cannot be read, or that is not a regular file: OpenSSL opens
    the path itself, with a blocking open, and a FIFO there would hang the process
    (the master's loop, for good) until a writer comes. Opened non-blocking, so the
    check itself cannot hang."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"option --{option}: {path!r} is not a regular file")
            os.read(fd, 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"option --{option}: cannot read {path!r}: "
                          f"{exc.strerror or exc}") from None


def _load_cas(ctx: ssl.SSLContext, option: str, path: str) -> None:
    if not path:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ConfigError(f"option --{option}: {path!r} holds no usable CA certificate "
                          f"({_reason(exc)})") from None


def _load_pair(ctx: ssl.SSLContext, cert: tuple[str, str], key: tuple[str, str],
               now: float) -> None:
    (cert_option, cert_path), (key_option, key_path) = cert, key
    _leaf_info(cert_option, cert_path, now)  # not PEM, or expired: say so first
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError(f"option --{key_option}: {key_path!r} does not match the "
                              f"certificate in --{cert_option} {cert_path!r}") from None
        raise ConfigError(f"option --{key_option}: cannot load the private key "
                          f"{key_path!r} ({_reason(exc)})") from None
    except OSError as exc:
        raise ConfigError(f"option --{key_option}: cannot read {key_path!r}: "
                          f"{exc.strerror or exc}") from None


def _leaf_info(option: str, path: str, now: float) -> CertInfo:
    info = _decode(option, path)
    if info.not_after <= now:
        raise ConfigError(f"option --{option}: the certificate in {path!r} expired on "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(info.not_after))}")
    return info


def _decode(option: str, path: str) -> CertInfo:
    """The first certificate of a PEM file, decoded by OpenSSL (no parser of ours)."""
    decode = ssl._ssl._test_decode_cert  # type: ignore[attr-defined]
    try:
        data = decode(path)
    except ssl.SSLError as exc:
        raise ConfigError(f"option --{option}: {path!r} is not a PEM certificate "
                          f"({_reason(exc)})") from None
    except OSError as exc:
        raise ConfigError(f"option --{option}: cannot read {path!r}: "
                          f"{exc.strerror or exc}") from None
    return _info(option, path, data)


def _ca_infos(option: str, path: str) -> list[CertInfo]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError):
        return []
    return [_info(option, path, data) for data in ctx.get_ca_certs()]


def _info(option: str, path: str, data: dict[str, Any]) -> CertInfo:
    subject = ",".join(f"{k}={v}" for rdn in data.get("subject", ()) for k, v in rdn)
    return CertInfo(option, path, subject, str(data.get("serialNumber", "")),
                    float(ssl.cert_time_to_seconds(data["notAfter"])))


def _reason(exc: ssl.SSLError) -> str:
    text = getattr(exc, "reason", None) or exc.strerror or (exc.args[0] if exc.args else exc)
    return str(text).lower().replace("_", " ")
