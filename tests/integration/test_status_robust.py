"""`etcd-gatewayd status` pointed at things that are not a gateway: one line naming
what it reached and why it is not a gateway, exit 1, never a traceback (the real
binary against real servers)."""
import http.server
import json
import socket
import threading

import pytest

from tests.support.gateway_proc import run_gateway
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


class _Pages(http.server.BaseHTTPRequestHandler):
    pages: dict[str, tuple[int, bytes]] = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        status, body = self.pages.get(self.path, (404, b"not here"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """start(pages) -> 'host:port' of an HTTP server answering {path: (status, body)}."""
    servers = []

    def start(pages):
        handler = type("Pages", (_Pages,), {"pages": pages})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def raw_server():
    """start(reply) -> 'host:port' of a TCP server that sends `reply` to each client
    and closes."""
    sockets = []

    def start(reply: bytes):
        server = socket.create_server(("127.0.0.1", 0))
        sockets.append(server)

        def serve():
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    try:
                        conn.recv(4096)
                        conn.sendall(reply)
                    except OSError:
                        pass

        threading.Thread(target=serve, daemon=True).start()
        return f"127.0.0.1:{server.getsockname()[1]}"

    yield start
    for server in sockets:
        server.close()


def status_fails(addr: str, *words: str) -> str:
    result = run_gateway(["status", f"--metrics-addr={addr}"], timeout=30)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"http://{addr}" in lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_server_that_does_not_speak_http(raw_server):
    status_fails(raw_server(b"SSH-2.0-OpenSSH_9.2\r\n"), "reached", "not HTTP")


def test_a_server_that_closes_without_answering(raw_server):
    status_fails(raw_server(b""), "reached", "not HTTP")


def test_an_http_server_without_the_gateway_pages(http_server):
    status_fails(http_server({}), "reached", "/endpoints answered HTTP 404")


def test_an_http_server_answering_html(http_server):
    status_fails(http_server({"/endpoints": (200, b"<html>hi</html>"),
                              "/health": (200, b"{}")}), "did not answer JSON")


@pytest.mark.parametrize("endpoints, health, words", [
    ({"endpoints": []}, {}, ["/endpoints did not answer a JSON list"]),
    ([], ["ok"], ["/health did not answer a JSON object"]),
    (["127.0.0.1:2379"], {}, ["not an endpoint object"]),
    ([{"endpoint": "a:1", "sent_bytes_total": "lots"}], {}, ["'sent_bytes_total'"]),
    ([{"endpoint": "a:1", "last_change": [1]}], {}, ["'last_change'"]),
])
def test_unexpected_json_shapes(http_server, endpoints, health, words):
    addr = http_server({"/endpoints": (200, json.dumps(endpoints).encode()),
                        "/health": (200, json.dumps(health).encode())})
    status_fails(addr, "not an etcd-gatewayd", *words)


def test_nothing_listening_is_unreachable():
    status_fails(f"127.0.0.1:{free_port()}", "cannot reach")
