"""The bytes of a session still open on an endpoint removed by a reload are never
credited to a newcomer, even when the table's slots have cycled round (the real
binary, real reloads, /endpoints)."""
import json
import signal
import socket
import urllib.request

import pytest

from tests.support.clients import roundtrip, wait_until
from tests.support.echo import EchoServer
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

FILLERS = [f"127.0.0.{i}:9" for i in range(2, 65)]  # 63 endpoints nobody serves


def endpoints(metrics: str) -> dict[str, dict]:
    with urllib.request.urlopen(f"http://{metrics}/endpoints", timeout=5) as resp:
        return {e["endpoint"]: e for e in json.loads(resp.read())}


def reload(gw, conf, text: str) -> None:
    before = gw.count_log("reloaded")
    conf.write_text(text)
    gw.signal(signal.SIGHUP)
    wait_until(lambda: gw.count_log("reloaded") > before, 15, "no reload")


def test_a_removed_endpoints_open_session_is_not_credited_to_a_newcomer(gateway_factory,
                                                                        tmp_path):
    metrics, port = f"127.0.0.1:{free_port()}", free_port()
    conf = tmp_path / "gw.conf"
    with EchoServer() as old, EchoServer() as new:
        conf.write_text(f"endpoints = {old.addr}\n")
        gw = gateway_factory(["-c", str(conf), f"--listen-addr=127.0.0.1:{port}",
                              f"--metrics-addr={metrics}", "--workers=1",
                              "--health-check=none", "--retry-delay=10m"])
        session = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert roundtrip(session, b"x" * 1000) == b"x" * 1000
        # the old endpoint leaves; 63 others take every other slot, so the next free
        # slot in the cycle is the old endpoint's, with its session still open
        reload(gw, conf, "".join(f"endpoints = {f}\n" for f in FILLERS))
        reload(gw, conf, "".join(f"endpoints = {f}\n" for f in FILLERS[:30])
               + f"endpoints = {new.addr}\n")
        assert roundtrip(session, b"y" * 5000) == b"y" * 5000  # still relayed to `old`
        with socket.create_connection(("127.0.0.1", port), timeout=10) as fresh:
            while roundtrip(fresh, b"z" * 7) != b"z" * 7:
                pass  # (fillers refuse; the client is moved on to `new`)
            wait_until(lambda: endpoints(metrics)[new.addr]["sent_bytes_total"] >= 7, 10,
                       "the newcomer's own bytes were not counted")
            shown = endpoints(metrics)[new.addr]
            assert shown["sent_bytes_total"] == 7 and shown["received_bytes_total"] == 7
            assert shown["active_connections"] == 1
        session.close()
