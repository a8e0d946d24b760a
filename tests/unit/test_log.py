"""Log setup: etcd's JSON keys, and reopening that cannot lose the log."""
import json
import logging

import pytest

from gateway import log as gwlog


def test_json_lines_have_etcd_keys_then_fields(tmp_path):
    path = tmp_path / "gw.log"
    gwlog.setup(gwlog.Settings("info", "json", str(path)))
    gwlog.get("t").info("activated", extra=gwlog.fields(address="127.0.0.1:2379"))
    line = json.loads(path.read_text().splitlines()[-1])
    assert list(line)[:4] == ["level", "ts", "caller", "msg"]
    assert (line["level"], line["msg"], line["address"]) == ("info", "activated",
                                                             "127.0.0.1:2379")


def test_a_log_file_that_cannot_be_opened_keeps_the_old_one(tmp_path):
    path = tmp_path / "gw.log"
    gwlog.setup(gwlog.Settings("info", "json", str(path)))
    with pytest.raises(OSError):
        gwlog.setup(gwlog.Settings("info", "json", str(tmp_path / "missing-dir" / "gw.log")))
    gwlog.get("t").warning("still logged")
    assert "still logged" in path.read_text()
    assert len(logging.getLogger(gwlog.LOGGER_NAME).handlers) == 1


class _Holder:
    def __init__(self, secret: str):
        self.secret = secret

    def method(self) -> None:
        """A handler whose repr() would show the holder's secret."""

    def __repr__(self) -> str:
        return f"<_Holder {self.secret}>"


def test_handler_name_is_the_qualified_name_never_the_repr():
    import functools

    holder = _Holder("canary-7f3a")
    for callback in (holder.method, functools.partial(holder.method),
                     functools.partial(functools.partial(holder.method))):
        name = gwlog.handler_name(callback)
        assert name.endswith("_Holder.method")
        assert "canary" not in name
    assert gwlog.handler_name(holder).endswith("_Holder")
