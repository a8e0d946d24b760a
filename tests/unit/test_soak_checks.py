"""The soak's own checks: its verdict on figures, and its reading of a watch stream."""
import socket
import threading
import time

from scripts.soaklib.etcdhttp import EtcdError, WatchStream, prefix_end
from scripts.soaklib.gauge import Footprint
from scripts.soaklib.report import FDS_SLACK, LaneFigures, failure_slack, verdict

START = Footprint(processes=3, fds=35, rss=74 << 20)


def lanes(**gateway):
    gw = LaneFigures("gateway", puts=1000, gets=1000, **gateway)
    return gw, LaneFigures("direct", puts=1000, gets=1000)


def test_a_clean_run_passes():
    assert verdict(*lanes(), START, START, [], []) == []


def test_gateway_failures_within_the_slack_over_direct_pass():
    gw, direct = lanes(failed=failure_slack(2000))
    assert verdict(gw, direct, START, START, [], []) == []


def test_gateway_failures_beyond_the_slack_over_direct_fail():
    gw, direct = lanes(failed=failure_slack(2000) + 1)
    assert "operations failed through the gateway" in verdict(gw, direct, START, START, [], [])[0]


def test_one_lost_watch_event_fails():
    assert verdict(*lanes(lost=1), START, START, [], []) == ["1 watch events lost (gateway)"]


def test_a_stale_read_fails():
    assert verdict(*lanes(stale_reads=1), START, START, [], []) == [
        "1 stale linearizable reads (gateway)"]


def test_descriptors_growing_beyond_the_bound_fail():
    end = Footprint(3, START.fds + FDS_SLACK + 1, START.rss)
    assert "gateway fds grew" in verdict(*lanes(), START, end, [], [])[0]


def test_an_error_line_in_the_gateway_log_fails():
    reasons = verdict(*lanes(), START, START, [], ["event handler failed"])
    assert reasons == ["the gateway logged 1 error lines (first: 'event handler failed')"]


def test_a_problem_of_the_schedule_comes_first():
    reasons = verdict(*lanes(lost=1), START, START, ["reload refused: x"], [])
    assert reasons[0] == "reload refused: x"


def test_prefix_end_is_the_next_key_after_every_key_with_the_prefix():
    assert prefix_end(b"/soak/a/") == b"/soak/a0"
    assert prefix_end(b"a\xff") == b"b"


def _serve_once(payload_parts: list[bytes]) -> str:
    """A one-connection HTTP server on 127.0.0.1 that sends the parts with pauses."""
    srv = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            for part in payload_parts:
                conn.sendall(part)
                time.sleep(0.05)
        srv.close()

    threading.Thread(target=run, daemon=True).start()
    return f"127.0.0.1:{srv.getsockname()[1]}"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def test_a_watch_stream_yields_events_split_across_chunks_and_reads():
    created = b'{"result":{"header":{"member_id":"42","revision":"7"},"created":true}}\n'
    events = (b'{"result":{"header":{"revision":"9"},"events":['
              b'{"kv":{"key":"L3MvYQ==","mod_revision":"8"}},'
              b'{"kv":{"key":"L3MvYg==","mod_revision":"9"}}]}}\n')
    body = _chunk(created) + _chunk(events[:30]) + _chunk(events[30:])
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    stream = WatchStream(_serve_once([head[:10], head[10:] + body[:17], body[17:]]),
                         b"/s/", 8, 2.0)
    got = []
    try:
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got += stream.poll(0.2)
        assert [(e.revision, e.key) for e in got] == [(8, b"/s/a"), (9, b"/s/b")]
        assert stream.member_id == "42"
    finally:
        stream.close()


def test_a_watch_stream_that_ends_is_an_error():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    stream = WatchStream(_serve_once([head + b"0\r\n\r\n"]), b"/s/", 1, 2.0)
    try:
        deadline = time.monotonic() + 5
        while True:
            assert time.monotonic() < deadline, "the end of the stream was not noticed"
            try:
                stream.poll(0.2)
            except EtcdError:
                break
    finally:
        stream.close()
