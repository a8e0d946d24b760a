"""The shipped documents match the option table they are generated from."""
import pathlib

from gateway.optdoc import render_conf, render_flag_table

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_gateway_conf_documents_every_option_with_its_default():
    assert (REPO / "conf" / "gateway.conf").read_text() == render_conf(), \
        "conf/gateway.conf drifted from the option table: run scripts/gen-docs"


def test_readme_flag_table_matches_the_option_table():
    assert render_flag_table() in (REPO / "README.md").read_text(), \
        "README flag table drifted from the option table: run scripts/gen-docs"


def test_readme_names_the_two_setup_commands():
    text = (REPO / "README.md").read_text()
    assert "scripts/demo" in text and "scripts/test" in text
