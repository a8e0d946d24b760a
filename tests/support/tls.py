"""Test PKI made with the openssl CLI, and a TLS echo server.

Design:
- `make_ca(dir, cn)` and `make_server_cert(ca, dir, dns_name)` run `openssl` (bounded
  subprocess calls) into `dir`; certificates are P-256, valid for two days, with the
  extensions strict verifiers want (CA: critical basicConstraints and keyUsage; leaf:
  SAN = the DNS name only, serverAuth, SKI/AKI), so the leaf matches that name and
  nothing else (not 127.0.0.1). `Pki(dir)` makes a trusted CA and an unrelated one.
- `make_cert(ca, dir, name, ...)` is the general leaf maker (IP and DNS SANs, server
  and/or client use, validity in days, negative for an expired one);
  `ClusterPki(dir)` holds what a TLS etcd cluster test needs: a CA, an unrelated CA,
  member certificates (IP:127.0.0.1, serverAuth+clientAuth), a client certificate
  and the gateway's serving certificate. `serial_of(cert)` and
  `presented_serial(addr, ...)` (`openssl s_client`) tell which certificate a
  listener presents, as an operator would check it.
- TLSEchoServer: one accept thread plus one thread per connection, blocking sockets
  with short timeouts so every loop notices `stop()`. Each connection does the
  handshake (bounded), then echoes until EOF. Handshakes the client aborts (it
  rejected our certificate) are expected and only counted. Optional: require a client
  certificate, cap the TLS version.
"""
from __future__ import annotations

import dataclasses
import pathlib
import shutil
import socket
import ssl
import subprocess
import threading

HOST = "127.0.0.1"
_TICK = 0.2
_OPENSSL_TIMEOUT = 30


def available() -> bool:
    return shutil.which("openssl") is not None


@dataclasses.dataclass(frozen=True)
class CertKey:
    cert: str
    key: str


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=_OPENSSL_TIMEOUT)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {res.stderr.strip()}")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)


def make_ca(directory: pathlib.Path | str, cn: str) -> CertKey:
    d = pathlib.Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    base = d / f"ca-{_safe(cn)}"
    cert, key = f"{base}.crt", f"{base}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", cwd=d)
    return CertKey(cert, key)


def make_server_cert(ca: CertKey, directory: pathlib.Path | str, dns_name: str,
                     tag: str = "") -> CertKey:
    d = pathlib.Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    base = d / f"srv-{_safe(dns_name)}{'-' + _safe(tag) if tag else ''}"
    cert, key, csr, ext = f"{base}.crt", f"{base}.key", f"{base}.csr", f"{base}.ext"
    pathlib.Path(ext).write_text(
        f"subjectAltName=DNS:{dns_name}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={dns_name}", cwd=d)
    _openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key,
             "-CAcreateserial", "-days", "2", "-sha256", "-extfile", ext, "-out", cert,
             cwd=d)
    return CertKey(cert, key)


def make_cert(ca: CertKey, directory: pathlib.Path | str, name: str, *,
              ips: tuple[str, ...] = (), dns: tuple[str, ...] = (), server: bool = True,
              client: bool = False, days: int = 2, tag: str = "") -> CertKey:
    """A leaf certificate signed by `ca`, CN=`name`; SANs from `ips` and `dns`.
    `days` < 0 makes a certificate that has already expired."""
    d = pathlib.Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    base = d / f"leaf-{_safe(name)}{'-' + _safe(tag) if tag else ''}"
    cert, key, csr, ext = f"{base}.crt", f"{base}.key", f"{base}.csr", f"{base}.ext"
    usage = [u for u, on in (("serverAuth", server), ("clientAuth", client)) if on]
    sans = [f"IP:{ip}" for ip in ips] + [f"DNS:{n}" for n in dns]
    lines = ["basicConstraints=critical,CA:FALSE",
             "keyUsage=critical,digitalSignature,keyEncipherment",
             f"extendedKeyUsage={','.join(usage)}",
             "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid"]
    if sans:
        lines.insert(0, "subjectAltName=" + ",".join(sans))
    pathlib.Path(ext).write_text("\n".join(lines) + "\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}", cwd=d)
    # OpenSSL 3.0 accepts a negative -days: notAfter before notBefore, already expired
    _openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key,
             "-CAcreateserial", "-days", str(days), "-sha256", "-extfile", ext, "-out", cert, cwd=d)
    return CertKey(cert, key)


def serial_of(cert: str) -> str:
    """The serial number of a PEM certificate file, as openssl prints it (hex)."""
    res = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", cert],
                         capture_output=True, text=True, timeout=_OPENSSL_TIMEOUT, check=True)
    return res.stdout.strip().split("=", 1)[1]


def presented_serial(addr: str, ca: str, client: CertKey | None = None) -> str:
    """The serial of the certificate the TLS listener at `addr` presents, read with
    `openssl s_client` (verifying it against `ca`); "" when no handshake happened."""
    cmd = ["openssl", "s_client", "-connect", addr, "-CAfile", ca, "-verify_return_error"]
    if client is not None:
        cmd += ["-cert", client.cert, "-key", client.key]
    res = subprocess.run(cmd, input="", capture_output=True, text=True,
                         timeout=_OPENSSL_TIMEOUT)
    if "-----BEGIN CERTIFICATE-----" not in res.stdout:
        return ""
    x509 = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=res.stdout,
                          capture_output=True, text=True, timeout=_OPENSSL_TIMEOUT)
    return x509.stdout.strip().split("=", 1)[-1]


class ClusterPki:
    """Certificates for a TLS etcd cluster and a gateway in front of it, in `directory`:
    `ca` (signs everything below), `other_ca` (unrelated), `member` (IP:127.0.0.1 and
    DNS:localhost, server and client use: members also present it to each other),
    `client` (client use: what the gateway or etcdctl presents) and `gateway` (the
    gateway's serving certificate, IP:127.0.0.1)."""

    def __init__(self, directory: pathlib.Path | str) -> None:
        self.dir = pathlib.Path(directory)
        self.ca = make_ca(self.dir, "etcd test CA")
        self.other_ca = make_ca(self.dir, "unrelated CA")
        self.member = make_cert(self.ca, self.dir, "member", ips=("127.0.0.1",),
                                dns=("localhost",), client=True)
        self.client = make_cert(self.ca, self.dir, "client", server=False, client=True)
        self.gateway = make_cert(self.ca, self.dir, "gateway", ips=("127.0.0.1",))


class Pki:
    """A trusted CA (`ca`) and an unrelated one (`other_ca`) in `directory`."""

    def __init__(self, directory: pathlib.Path | str) -> None:
        self.dir = pathlib.Path(directory)
        self.ca = make_ca(self.dir, "etcd-gatewayd test CA")
        self.other_ca = make_ca(self.dir, "unrelated test CA")

    def server(self, dns_name: str, other_ca: bool = False) -> CertKey:
        ca = self.other_ca if other_ca else self.ca
        return make_server_cert(ca, self.dir, dns_name, tag="other" if other_ca else "")


class TLSEchoServer:
    """Threaded TLS echo server on 127.0.0.1 (a free port)."""

    def __init__(self, cert: str | CertKey, key: str | None = None,
                 require_client_cert: bool = False, client_ca: str | None = None,
                 max_version: ssl.TLSVersion | None = None,
                 handshake_timeout: float = 5.0) -> None:
        if isinstance(cert, CertKey):
            cert, key = cert.cert, cert.key
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca or cert)
        if max_version is not None:
            ctx.maximum_version = max_version
        self._ctx = ctx
        self.handshake_timeout = handshake_timeout
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind((HOST, 0))
        self._lsock.listen(64)
        self._lsock.settimeout(_TICK)
        self.port: int = self._lsock.getsockname()[1]
        self.addr = f"{HOST}:{self.port}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self.handshakes = 0          # completed on the server side
        self.failed_handshakes = 0
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name=f"tls-echo-{self.port}")
        self._accept_thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._lsock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(self.handshake_timeout)
        try:
            tls = self._ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            with self._lock:
                self.failed_handshakes += 1
            conn.close()
            return
        with self._lock:
            self.handshakes += 1
        tls.settimeout(_TICK)
        try:
            while not self._stop.is_set():
                try:
                    data = tls.recv(65536)
                except (socket.timeout, TimeoutError):
                    continue
                if not data:
                    break
                tls.sendall(data)
        except (ssl.SSLError, OSError):
            pass
        finally:
            tls.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._lsock.close()
        self._accept_thread.join(timeout)
        for t in self._threads:
            t.join(timeout)

    def __enter__(self) -> "TLSEchoServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
