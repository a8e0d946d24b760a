"""The event loop: dispatch, timers, and containment of a failing handler."""
import socket

from gateway.loop import READ, Loop


def test_a_failing_handler_is_reported_and_the_loop_goes_on():
    errors = []
    loop = Loop(on_error=lambda cb, exc: errors.append(exc))
    a, b = socket.socketpair()
    seen = []

    def bad(fd, mask):
        raise RuntimeError("bug")

    loop.selector.register(a.fileno(), READ, bad)
    loop.call_later(0, lambda: seen.append("timer ran"))
    b.sendall(b"x")
    loop.run_once(0.1)
    assert [str(e) for e in errors] == ["bug"]
    assert seen == ["timer ran"]
    loop.selector.unregister(a.fileno())
    loop.call_later(0, lambda: 1 / 0)
    loop.run_once(0.01)
    assert isinstance(errors[-1], ZeroDivisionError)
    loop.close()
    a.close()
    b.close()


def test_a_cancelled_timer_lets_go_of_its_callback_at_once():
    loop = Loop()
    big = bytearray(1 << 20)
    timer = loop.call_later(60, lambda: big)
    timer.cancel()
    assert timer.callback.__name__ == "_nothing"
    loop.close()


def test_error_events_are_reported_as_readable_and_writable():
    loop = Loop()
    a, b = socket.socketpair()
    masks = []
    loop.selector.register(a.fileno(), READ, lambda fd, mask: masks.append(mask))
    b.close()  # the peer hangs up: EPOLLHUP
    loop.run_once(0.1)
    assert masks and masks[0] & READ and masks[0] & 4
    loop.close()
    a.close()
