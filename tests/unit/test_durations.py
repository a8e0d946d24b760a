"""Go duration syntax."""
import pytest

from gateway.durations import format_duration, parse_duration


@pytest.mark.parametrize("text, seconds", [
    ("1m0s", 60.0), ("500ms", 0.5), ("1h2m3s", 3723.0), ("5s", 5.0), ("1.5s", 1.5),
    ("250us", 0.00025), ("1h", 3600.0), ("0", 0.0), ("-5s", -5.0),
])
def test_parses_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["123", "5", "", "s", "5x", "1m 5s", "five"])
def test_refuses_what_go_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("seconds, text", [(60, "1m0s"), (0.5, "500ms"), (3723, "1h2m3s"),
                                           (5, "5s"), (30, "30s")])
def test_formats_like_go(seconds, text):
    assert format_duration(seconds) == text
