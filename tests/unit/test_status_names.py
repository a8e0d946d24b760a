"""`etcd-gatewayd status` names the host name an endpoint's address was resolved from."""
from gateway import status


def _row(endpoint: str, label: str) -> dict:
    return {"endpoint": endpoint, "label": label, "state": "up", "last_change": 0}


def test_an_address_resolved_from_a_name_shows_the_name():
    table = status.render_table([_row("127.0.0.2:2379", "db.test:2379")], now=0)
    assert "127.0.0.2:2379 (db.test:2379)" in table


def test_an_ip_literal_shows_once():
    table = status.render_table([_row("127.0.0.2:2379", "127.0.0.2:2379")], now=0)
    assert "(" not in table.splitlines()[1]
