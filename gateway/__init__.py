"""etcd-gatewayd: a pre-fork, zero-copy TCP gateway in front of an etcd cluster."""

__version__ = "0.1.0"
