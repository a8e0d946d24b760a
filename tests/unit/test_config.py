"""Option parsing and validation: the original's flags, our additions, and refusals."""
import pytest

from gateway import config
from gateway.addresses import HostPort


def load(*argv, env=None):
    return config.load(list(argv), env or {})


def refused(*argv, env=None) -> str:
    with pytest.raises(config.ConfigError) as info:
        load(*argv, env=env)
    return str(info.value)


def test_defaults_match_the_original_gateway():
    c = load()
    assert c.listen_addr == (HostPort("127.0.0.1", 23790),)
    assert c.endpoints == (HostPort("127.0.0.1", 2379),)
    assert c.retry_delay == 60.0
    assert c.insecure_discovery is False
    assert c.discovery_srv == ""


def test_new_option_defaults():
    c = load()
    assert c.dial_timeout == 1.0
    assert c.shutdown_timeout == 30.0
    assert c.workers >= 1
    assert (c.log_level, c.log_format, c.log_file) == ("info", "json", "")


def test_start_word_is_accepted_first():
    assert load("start", "--endpoints=a:1").endpoints == (HostPort("a", 1),)


def test_flag_equals_and_flag_space_forms_both_work():
    assert load("--retry-delay=5s").retry_delay == 5.0
    assert load("--retry-delay", "5s").retry_delay == 5.0


def test_endpoints_are_comma_separated_and_repeatable_without_duplicates():
    c = load("--endpoints=a:1,b:2", "--endpoints", "c:3,a:1")
    assert c.endpoints == (HostPort("a", 1), HostPort("b", 2), HostPort("c", 3))


def test_endpoint_without_port_means_2379():
    assert load("--endpoints=etcd1").endpoints == (HostPort("etcd1", 2379),)


def test_ipv6_literals_work_for_endpoints_and_listen_address():
    c = load("--endpoints=[::1]:2379,[::1]", "--listen-addr=[::1]:23790")
    assert c.endpoints == (HostPort("::1", 2379),)
    assert c.listen_addr == (HostPort("::1", 23790),)


def test_empty_listen_host_means_every_interface():
    assert load("--listen-addr=:23790").listen_addr == (HostPort("", 23790),)


@pytest.mark.parametrize("value", ["true", "false", "1", "0"])
def test_boolean_accepts_explicit_values(value):
    assert load(f"--insecure-discovery={value}").insecure_discovery is (value in ("true", "1"))


def test_boolean_alone_means_true():
    assert load("--insecure-discovery").insecure_discovery is True


def test_go_durations_parse():
    assert load("--retry-delay=1h2m3s").retry_delay == 3723.0
    assert load("--dial-timeout=500ms").dial_timeout == 0.5


@pytest.mark.parametrize("argv, names", [
    (["--retry-delay", "123"], ["--retry-delay", "'123'", "missing unit"]),
    (["--retry-delay=0s"], ["--retry-delay", "'0s'", "positive"]),
    (["--retry-delay=0"], ["--retry-delay", "'0'"]),
    (["--dial-timeout=-1s"], ["--dial-timeout", "'-1s'"]),
    (["--shutdown-timeout=soon"], ["--shutdown-timeout", "'soon'"]),
    (["--endpoints=https://10.0.0.1:2379,10.0.0.2:2379"], ["--endpoints", "mixes https://"]),
    (["--endpoints=unix://x"], ["--endpoints", "scheme"]),
    (["--endpoints=a:notaport"], ["--endpoints", "notaport"]),
    (["--endpoints=a:0"], ["--endpoints", "a:0"]),
    (["--endpoints=a:65536"], ["--endpoints", "65536"]),
    (["--endpoints="], ["--endpoints", "no endpoints"]),
    (["--endpoints=, ,"], ["--endpoints", "no endpoints"]),
    (["--listen-addr=localhost"], ["--listen-addr", "'localhost'", "missing port"]),
    (["--listen-addr=[::1"], ["--listen-addr", "[::1"]),
    (["--listen-addr=1.2.3.4:99999"], ["--listen-addr", "99999"]),
    (["--workers=two"], ["--workers", "'two'"]),
    (["--workers=0"], ["--workers", "'0'"]),
    (["--log-level=loud"], ["--log-level", "'loud'"]),
    (["--log-format=xml"], ["--log-format", "'xml'"]),
    (["--insecure-discovery=maybe"], ["--insecure-discovery", "'maybe'"]),
    (["--discovery-srv-name=x"], ["--discovery-srv-name", "--discovery-srv"]),
    (["--no-such-flag"], ["--no-such-flag"]),
    (["--max-connections=1.5"], ["--max-connections", "'1.5'"]),
    (["--max-connections=99999999999"], ["--max-connections", "99999999999"]),
    (["--balance=leastconn"], ["--balance", "'leastconn'"]),
    (["--busy-poll=2ms"], ["--busy-poll", "'2ms'", "at most 1ms"]),
    (["--busy-poll=-1us"], ["--busy-poll", "'-1us'"]),
])
def test_bad_values_are_refused_with_one_line_naming_option_and_value(argv, names):
    message = refused(*argv)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_unreadable_config_file_is_refused(tmp_path):
    message = refused("-c", str(tmp_path / "missing.conf"))
    assert "--config" in message and "missing.conf" in message


def test_unknown_key_in_config_file_is_refused(tmp_path):
    path = tmp_path / "gw.conf"
    path.write_text("endpoints = a:1\nlisten-adr = 127.0.0.1:1\n")
    message = refused("-c", str(path))
    assert "listen-adr" in message and str(path) in message


def test_bad_value_in_config_file_names_the_file(tmp_path):
    path = tmp_path / "gw.conf"
    path.write_text("retry-delay = 5\n")
    message = refused("--config", str(path))
    assert "--retry-delay" in message and "'5'" in message and str(path) in message


def test_config_file_keys_are_long_flag_names(tmp_path):
    path = tmp_path / "gw.conf"
    path.write_text("endpoints = a:2379,b:2379\nlisten-addr = 127.0.0.1:23791\n"
                    "retry-delay = 5s\ninsecure-discovery = true\n")
    c = load("-c", str(path))
    assert c.endpoints == (HostPort("a", 2379), HostPort("b", 2379))
    assert c.listen_addr == (HostPort("127.0.0.1", 23791),)
    assert c.retry_delay == 5.0
    assert c.insecure_discovery is True


def test_environment_variables_use_the_etcd_gateway_prefix():
    c = load(env={"ETCD_GATEWAY_LISTEN_ADDR": "127.0.0.1:1234",
                  "ETCD_GATEWAY_ENDPOINTS": "x:1,y:2"})
    assert c.listen_addr == (HostPort("127.0.0.1", 1234),)
    assert c.endpoints == (HostPort("x", 1), HostPort("y", 2))


def test_precedence_is_flag_then_environment_then_file_then_default(tmp_path):
    path = tmp_path / "gw.conf"
    path.write_text("retry-delay = 3s\ndial-timeout = 3s\nshutdown-timeout = 3s\n")
    env = {"ETCD_GATEWAY_RETRY_DELAY": "2s", "ETCD_GATEWAY_DIAL_TIMEOUT": "2s"}
    c = load("-c", str(path), "--retry-delay=1s", env=env)
    assert (c.retry_delay, c.dial_timeout, c.shutdown_timeout) == (1.0, 2.0, 3.0)
    assert c.workers >= 1  # default


def test_command_line_endpoints_replace_the_file_ones(tmp_path):
    path = tmp_path / "gw.conf"
    path.write_text("endpoints = a:1,b:2\n")
    assert load("-c", str(path), "--endpoints=c:3").endpoints == (HostPort("c", 3),)


def test_sources_say_where_each_value_came_from(tmp_path):
    path = tmp_path / "gw.conf"
    path.write_text("dial-timeout = 3s\n")
    c = load("-c", str(path), "--retry-delay=1s", env={"ETCD_GATEWAY_WORKERS": "3"})
    assert c.sources["retry-delay"] == "flag"
    assert c.sources["workers"].startswith("environment")
    assert c.sources["dial-timeout"].startswith("file")
    assert "log-level" not in c.sources


def test_describe_writes_values_as_they_would_be_given():
    c = load("--endpoints=a:1,[::1]:2", "--retry-delay=90s")
    assert c.describe("retry-delay") == "1m30s"
    assert c.describe("endpoints") == "a:1,[::1]:2"
    assert c.describe("insecure-discovery") == "false"


def test_srv_resolvers_are_ip_addresses_with_port_53_by_default():
    c = load("--discovery-srv-resolver=127.0.0.1:8600,[::1],10.0.0.2")
    assert [str(r) for r in c.discovery_srv_resolver] == ["127.0.0.1:8600", "[::1]:53",
                                                         "10.0.0.2:53"]
    message = refused("--discovery-srv-resolver=dns.example.com")
    assert "--discovery-srv-resolver" in message and "not an IP address" in message


def test_more_endpoints_than_the_table_holds_are_refused():
    many = ",".join(f"10.0.0.1:{port}" for port in range(3000, 3065))
    message = refused(f"--endpoints={many}")
    assert "--endpoints" in message and "65" in message and "at most 64" in message


def test_workers_are_capped_so_a_reload_can_replace_them_all():
    assert load("--workers=64").workers == 64
    assert "--workers" in refused("--workers=65")


@pytest.mark.parametrize("value", ["-1", "a..b", ".example.com", "exa mple.com",
                                   "example.com-", "x" * 64 + ".com", "é.example",
                                   ("a" * 60 + ".") * 5 + "com"])
def test_discovery_srv_that_is_not_a_dns_name_is_refused(value):
    assert refused(f"--discovery-srv={value}").startswith("option --discovery-srv: invalid value")


@pytest.mark.parametrize("value", ["example.com", "example.com.", "etcd_1.internal",
                                   "1.example", "a-b.c"])
def test_discovery_srv_that_is_a_dns_name_is_kept(value):
    assert load(f"--discovery-srv={value}").discovery_srv == value


@pytest.mark.parametrize("value", ["a.b-", "a b", "x" * 47, "a..b"])
def test_discovery_srv_name_that_cannot_form_an_srv_name_is_refused(value):
    message = refused("--discovery-srv=example.com", f"--discovery-srv-name={value}")
    assert message.startswith("option --discovery-srv-name: invalid value")


def test_discovery_srv_name_that_makes_the_srv_name_too_long_is_refused():
    domain = ".".join(["a" * 60] * 3) + ".com"     # 187 characters: valid alone
    assert load(f"--discovery-srv={domain}").discovery_srv == domain
    message = refused(f"--discovery-srv={domain}", "--discovery-srv-name=" + "n" * 46)
    assert "--discovery-srv-name" in message and "253" in message
