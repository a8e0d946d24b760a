"""Documents generated from the option table: conf/gateway.conf and the README table.

design: the table in config.py is the single source; `scripts/gen-docs` writes these
texts and a unit test fails when the committed files drift from them.
"""
from __future__ import annotations

import textwrap

from gateway.config import CONFIG_HELP, OPTIONS

CONF_HEADER = """\
# etcd-gatewayd configuration file.
#
# One `option = value` per line; the keys are the long command-line flag names.
# Precedence: command line > environment (ETCD_GATEWAY_<OPTION>) > this file > defaults.
# Every option is listed below, commented out, with its default; all are applied by
# SIGHUP (a reload) without a restart.
# Generated from gateway/config.py by scripts/gen-docs: edit the table, not this file.
"""


def render_conf() -> str:
    parts = [CONF_HEADER]
    for opt in OPTIONS:
        lines = textwrap.wrap(opt.help, 86)
        origin = "as in etcd gateway" if opt.origin == "etcd" else "etcd-gatewayd only"
        lines.append(f"({origin}; env {opt.env})")
        default = opt.default_text() if opt.name != "workers" else "<CPUs available>"
        parts.append("\n".join("# " + line for line in lines)
                     + f"\n# {opt.name} = {default}\n")
    return "\n".join(parts)


def render_flag_table() -> str:
    rows = ["| flag | default | environment | from | meaning |",
            "|---|---|---|---|---|"]
    for opt in OPTIONS:
        default = opt.default_text() if opt.name != "workers" else "CPUs available"
        rows.append(
            f"| `--{opt.name}` | `{default}` | `{opt.env}` | "
            f"{'etcd' if opt.origin == 'etcd' else 'new'} | {opt.help} |")
    rows.append(f"| `-c`, `--config` | none | | new | {CONFIG_HELP} |")
    return "\n".join(rows) + "\n"
