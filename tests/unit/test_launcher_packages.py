"""The launcher's list of runtime packages is the one setup.cfg installs."""
import configparser
import importlib.machinery
import importlib.util
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_launcher():
    loader = importlib.machinery.SourceFileLoader("launcher", str(REPO / "bin" / "etcd-gatewayd"))
    spec = importlib.util.spec_from_loader("launcher", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_launcher_checks_exactly_the_packages_setup_cfg_requires():
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    required = {re.split(r"[<>=!~ ]", line.strip())[0].lower()
                for line in parser["options"]["install_requires"].splitlines() if line.strip()}
    launcher = load_launcher()
    assert {dist.lower() for _, dist in launcher.RUNTIME_PACKAGES} == required


def test_the_launcher_finds_nothing_missing_in_the_suites_interpreter():
    assert load_launcher().missing_requirement() is None
