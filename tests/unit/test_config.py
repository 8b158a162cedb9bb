"""gateway.config: Postfix-named keys, GATEWAY_* overrides, and errors that name key and value."""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, build, describe, load
from gateway.errors import ConfigError
from gateway.values import ListenerConfig, NextHop, parse_network, parse_next_hop

SHA256_HEX = "ab" * 32
SHA1_HEX = "cd" * 20
SHA256_COLONS = ":".join(["AB"] * 32)
SHA1_COLONS = ":".join(["CD"] * 20)


def _write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- defaults


def test_build_empty_gives_documented_defaults(tmp_path: Path) -> None:
    config = build({}, tmp_path)
    assert config.myhostname == "localhost"
    assert config.listeners == ()
    assert config.mynetworks == () and config.relay_domains == () and config.relayhost == ()
    assert config.relay_clientcerts == frozenset()
    assert dict(config.transport_maps) == {} and dict(config.smtp_sasl_password_maps) == {}
    assert config.message_size_limit == 10240000
    assert config.maximal_queue_lifetime == 5 * 86400.0
    assert config.bounce_queue_lifetime == 5 * 86400.0
    assert config.minimal_backoff_time == 300.0 and config.maximal_backoff_time == 4000.0
    assert config.smtp_tls_security_level == "may"
    assert config.smtpd_recipient_limit == 1000
    assert config.state_dir == tmp_path / "var"
    assert config.spool_dir == tmp_path / "var" / "spool"
    assert config.tls_dir == tmp_path / "var" / "tls"
    assert config.smtpd_tls_cert_file is None and config.smtpd_tls_key_file is None
    assert config.log_level == "info" and config.log_format == "text"
    assert config.spool_sync_method == "fsync"


def test_load_without_file_uses_embedded_default() -> None:
    config = load(None, {})
    assert config.listeners == (ListenerConfig("smtp", "127.0.0.1", 2525, "starttls", False),)
    assert config.mynetworks == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert config.relay_domains == ()
    assert config.relayhost == ()


def test_spool_dir_follows_state_dir(tmp_path: Path) -> None:
    config = build({"state_dir": "/srv/gw"}, tmp_path)
    assert config.state_dir == Path("/srv/gw")
    assert config.spool_dir == Path("/srv/gw/spool")
    config = build({"state_dir": "state", "spool_dir": "q"}, tmp_path)
    assert config.state_dir == tmp_path / "state"
    assert config.spool_dir == tmp_path / "q"


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = _write(tmp_path, 'state_dir = "./data"\nsmtpd_tls_CAfile = "ca.pem"\n')
    config = load(path, {})
    assert config.state_dir == tmp_path.resolve() / "data"
    assert config.smtpd_tls_CAfile == tmp_path.resolve() / "ca.pem"


# ---- durations and sizes


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("5d", 432000.0),
        ("300s", 300.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1w", 604800.0),
        ("300", 300.0),
        (300, 300.0),
        (1.5, 1.5),
    ],
)
def test_postfix_duration_forms(raw: object, seconds: float) -> None:
    config = build({"maximal_queue_lifetime": raw, "smtp_timeout": raw, "metrics_timeout": raw})
    assert config.maximal_queue_lifetime == seconds
    assert config.smtp_timeout == seconds
    assert config.metrics_timeout == seconds


def test_message_size_limit_forms() -> None:
    assert build({"message_size_limit": "50M"}).message_size_limit == 50 * 1024 * 1024
    assert build({"message_size_limit": "512k"}).message_size_limit == 512 * 1024
    assert build({"message_size_limit": 1000}).message_size_limit == 1000
    assert build({"message_size_limit": "1000"}).message_size_limit == 1000


# Regression: a NaN duration (TOML 'nan') used to pass, since 'value < 0' is false for NaN.
def test_nan_duration_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        build({"smtpd_timeout": math.nan})
    assert info.value.key == "smtpd_timeout"


# ---- next hops


@pytest.mark.parametrize(
    ("text", "hop"),
    [
        ("[10.0.0.1]:25", NextHop("10.0.0.1", 25, False)),
        ("[relay.example.com]:587", NextHop("relay.example.com", 587, False)),
        ("[relay.example.com]", NextHop("relay.example.com", None, False)),
        ("relay.example.com:2525", NextHop("relay.example.com", 2525, True)),
        ("relay.example.com", NextHop("relay.example.com", None, True)),
        ("Relay.Example.COM.", NextHop("relay.example.com", None, True)),
        ("[::1]:25", NextHop("::1", 25, False)),
        ("[2001:db8::1]", NextHop("2001:db8::1", None, False)),
        ("smtp:[10.0.0.1]:25", NextHop("10.0.0.1", 25, False)),
        ("relay:mx.example.net", NextHop("mx.example.net", None, True)),
        ("  [10.0.0.2]:26  ", NextHop("10.0.0.2", 26, False)),
    ],
)
def test_parse_next_hop(text: str, hop: NextHop) -> None:
    assert parse_next_hop(text) == hop


@pytest.mark.parametrize(
    ("hop", "text"),
    [
        (NextHop("10.0.0.1", 25, False), "[10.0.0.1]:25"),
        (NextHop("relay.example.com", None, True), "relay.example.com"),
        (NextHop("relay.example.com", 2525, True), "relay.example.com:2525"),
        (NextHop("::1", 25, False), "[::1]:25"),
    ],
)
def test_next_hop_str_round_trips(hop: NextHop, text: str) -> None:
    assert str(hop) == text
    assert parse_next_hop(str(hop)) == hop


@pytest.mark.parametrize(
    "text", ["", "[]:25", ":25", "[10.0.0.1]25", "[10.0.0.1]:", "host:0", "host:65536", "host:port", "[10.0.0.1]:-1"]
)
def test_parse_next_hop_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_next_hop(text)


def test_relayhost_list_and_string_forms() -> None:
    expected = (NextHop("10.0.0.1", 25, False), NextHop("10.0.0.2", 25, False))
    assert build({"relayhost": ["[10.0.0.1]:25", "[10.0.0.2]:25"]}).relayhost == expected
    assert build({"relayhost": "[10.0.0.1]:25, [10.0.0.2]:25"}).relayhost == expected
    assert build({"relayhost": "[10.0.0.1]:25 [10.0.0.2]:25"}).relayhost == expected
    assert build({"relayhost": "mx.example.com"}).relayhost == (NextHop("mx.example.com", None, True),)
    assert build({"relayhost": ""}).relayhost == ()


def test_relayhost_bad_entry_names_key_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        build({"relayhost": ["[10.0.0.1]:25", "[10.0.0.2]:99999"]})
    assert info.value.key == "relayhost"
    assert info.value.value == "[10.0.0.2]:99999"
    assert "relayhost" in str(info.value) and "[10.0.0.2]:99999" in str(info.value)


def test_relayhost_wrong_type() -> None:
    with pytest.raises(ConfigError) as info:
        build({"relayhost": 25})
    assert info.value.key == "relayhost"


# ---- transport_maps


def test_transport_maps_table_form() -> None:
    config = build(
        {
            "transport_maps": {
                "Example.COM.": "[10.0.0.5]:25",
                "other.example": "[10.0.0.6]:2525, mx.other.example",
            }
        }
    )
    assert dict(config.transport_maps) == {
        "example.com": (NextHop("10.0.0.5", 25, False),),
        "other.example": (NextHop("10.0.0.6", 2525, False), NextHop("mx.other.example", None, True)),
    }


# Regression: table values used to be str()ed, turning an array of hops into "['[10.0.0.6]:2525', ...]".
def test_transport_maps_table_with_array_of_hops() -> None:
    config = build(
        {
            "transport_maps": {
                "Example.COM.": "[10.0.0.5]:25",
                "other.example": ["[10.0.0.6]:2525", "mx.other.example"],
            }
        }
    )
    assert dict(config.transport_maps) == {
        "example.com": (NextHop("10.0.0.5", 25, False),),
        "other.example": (NextHop("10.0.0.6", 2525, False), NextHop("mx.other.example", None, True)),
    }


def test_transport_maps_env_string_form() -> None:
    config = load(None, {"GATEWAY_TRANSPORT_MAPS": "a.com=[1.2.3.4]:25, b.org=mx.b.org:2525"})
    assert dict(config.transport_maps) == {
        "a.com": (NextHop("1.2.3.4", 25, False),),
        "b.org": (NextHop("mx.b.org", 2525, True),),
    }


def test_transport_maps_errors() -> None:
    with pytest.raises(ConfigError) as info:
        build({"transport_maps": "a.com"})
    assert info.value.key == "transport_maps" and "a.com" in str(info.value)
    with pytest.raises(ConfigError) as info:
        build({"transport_maps": {"a.com": "[1.2.3.4]:0"}})
    assert info.value.key == "transport_maps.a.com"
    assert "[1.2.3.4]:0" in str(info.value)
    with pytest.raises(ConfigError) as info:
        build({"transport_maps": {"not a domain": "[1.2.3.4]:25"}})
    assert info.value.key == "transport_maps"
    with pytest.raises(ConfigError) as info:
        build({"transport_maps": ["a.com=[1.2.3.4]"]})
    assert info.value.key == "transport_maps"


# ---- environment overrides


def test_env_overrides_toml(tmp_path: Path) -> None:
    path = _write(tmp_path, 'relayhost = ["[10.9.9.9]:25"]\nmynetworks = ["127.0.0.0/8"]\nmessage_size_limit = "1M"\n')
    config = load(
        path,
        {
            "GATEWAY_RELAYHOST": "[10.0.0.1]:25, [10.0.0.2]:2525",
            "GATEWAY_MYNETWORKS": "10.0.0.0/8, 192.168.0.0/16 [::1]/128",
            "GATEWAY_RELAY_DOMAINS": "example.com,.example.org",
            "GATEWAY_SMTPD_RECIPIENT_LIMIT": "50",
            "GATEWAY_AUTO_TRUST_NETWORKS": "yes",
            "GATEWAY_MAXIMAL_QUEUE_LIFETIME": "2d",
            "GATEWAY_SMTP_TLS_SECURITY_LEVEL": "ENCRYPT",
            "GATEWAY_SMTPD_TLS_CAFILE": "/etc/ca.pem",
            "OTHER_RELAYHOST": "[6.6.6.6]:25",
            "GATEWAY_UNKNOWN_THING": "ignored",
            "GATEWAY_LISTENER": "ignored",
        },
    )
    assert config.relayhost == (NextHop("10.0.0.1", 25, False), NextHop("10.0.0.2", 2525, False))
    assert config.mynetworks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.0.0/16"),
        ipaddress.ip_network("::1/128"),
    )
    assert config.relay_domains == ("example.com", ".example.org")
    assert config.smtpd_recipient_limit == 50
    assert config.auto_trust_networks is True
    assert config.maximal_queue_lifetime == 2 * 86400.0
    assert config.smtp_tls_security_level == "encrypt"
    assert config.smtpd_tls_CAfile == Path("/etc/ca.pem")
    assert config.message_size_limit == 1024 * 1024  # not overridden: TOML value kept


def test_env_relayhost_empty_means_direct_mx() -> None:
    assert load(None, {"GATEWAY_RELAYHOST": ""}).relayhost == ()


def test_env_is_case_sensitive_prefix() -> None:
    assert load(None, {"gateway_relayhost": "[10.0.0.1]:25"}).relayhost == ()


def test_env_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load(None, {"GATEWAY_SMTPD_RECIPIENT_LIMIT": "lots"})
    assert info.value.key == "smtpd_recipient_limit"
    assert "lots" in str(info.value)


def test_env_sasl_password_maps() -> None:
    config = load(None, {"GATEWAY_SMTP_SASL_PASSWORD_MAPS": "[relay.example]:587=user:se=cret"})
    assert dict(config.smtp_sasl_password_maps) == {"[relay.example]:587": ("user", "se=cret")}


def test_os_environ_is_used_when_environ_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MYHOSTNAME", "Gw.Example.NET.")
    assert load(None).myhostname == "gw.example.net"


# ---- listeners


def test_listener_parsing(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[[listener]]
name = "submission"
address = "0.0.0.0:587"
tls = "starttls"
require_tls = true

[[listener]]
address = "[::]:465"
tls = "IMPLICIT"

[[listener]]
name = "plain"
address = "127.0.0.1:2525"
tls = "none"
require_tls = "no"
""",
    )
    config = load(path, {})
    assert config.listeners == (
        ListenerConfig("submission", "0.0.0.0", 587, "starttls", True),
        ListenerConfig("listener1", "::", 465, "implicit", False),
        ListenerConfig("plain", "127.0.0.1", 2525, "none", False),
    )


@pytest.mark.parametrize(
    ("listener", "key", "value"),
    [
        ({"address": "0.0.0.0:25", "tls": "ssl"}, "listener[0].tls", "ssl"),
        ({"address": "0.0.0.0"}, "listener[0].address", "0.0.0.0"),
        ({"address": "0.0.0.0:70000"}, "listener[0].address", "0.0.0.0:70000"),
        ({"address": 25}, "listener[0].address", 25),
        ({"address": "0.0.0.0:25", "port": 25}, "listener[0].port", 25),
        ({"address": "0.0.0.0:25", "require_tls": "maybe"}, "listener[0].require_tls", "maybe"),
    ],
)
def test_listener_errors_name_the_key(listener: dict[str, Any], key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        build({"listener": [listener]})
    assert info.value.key == key
    assert info.value.value == value
    assert repr(key) in str(info.value) and repr(value) in str(info.value)


def test_listener_must_be_an_array_of_tables() -> None:
    with pytest.raises(ConfigError) as info:
        build({"listener": {"address": "0.0.0.0:25"}})
    assert info.value.key == "listener"
    with pytest.raises(ConfigError) as info:
        build({"listener": ["0.0.0.0:25"]})
    assert info.value.key == "listener[0]"


def test_duplicate_listener_names_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        build({"listener": [{"name": "a", "address": "127.0.0.1:25"}, {"name": "a", "address": "127.0.0.1:26"}]})
    assert info.value.key == "listener.name"


# ---- relay_clientcerts


def test_relay_clientcerts_normalisation() -> None:
    config = build(
        {
            "relay_clientcerts": [
                SHA256_COLONS,
                f"{SHA1_COLONS} trusted.mailserver.example.tld",
                "SHA256 Fingerprint=" + ":".join(["EF"] * 32),
                "",
            ]
        }
    )
    assert config.relay_clientcerts == frozenset({SHA256_HEX, SHA1_HEX, "ef" * 32})


def test_relay_clientcerts_string_form() -> None:
    config = build({"relay_clientcerts": f"{SHA256_COLONS}, {SHA1_HEX}\n{'01' * 32} comment"})
    assert config.relay_clientcerts == frozenset({SHA256_HEX, SHA1_HEX, "01" * 32})
    config = load(None, {"GATEWAY_RELAY_CLIENTCERTS": f"{SHA256_HEX},{SHA1_COLONS}"})
    assert config.relay_clientcerts == frozenset({SHA256_HEX, SHA1_HEX})


@pytest.mark.parametrize("value", ["AB:CD", "zz" * 32, "A:BC" + "D" * 62, "sha1 Fingerprint=" + SHA256_HEX])
def test_relay_clientcerts_errors(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        build({"relay_clientcerts": [value]})
    assert info.value.key == "relay_clientcerts"
    assert info.value.value == value
    assert "relay_clientcerts" in str(info.value) and repr(value) in str(info.value)


# ---- other values


def test_mynetworks_forms() -> None:
    config = build({"mynetworks": ["10.0.0.0/8", "[::1]/128", "192.168.1.7", "[2001:db8::]/32", "10.1.2.3/8"]})
    assert config.mynetworks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("10.0.0.0/8"),
    )
    assert parse_network(" [fe80::]/10 ") == ipaddress.ip_network("fe80::/10")


def test_relay_domains_are_normalised() -> None:
    config = build({"relay_domains": ["Example.COM.", ".Sub.Example.org"]})
    assert config.relay_domains == ("example.com", ".sub.example.org")


def test_dns_nameservers() -> None:
    config = build({"dns_nameservers": ["127.0.0.1", "127.0.0.2:5353", "[::1]:53", "::1"]})
    assert config.dns_nameservers == (("127.0.0.1", 53), ("127.0.0.2", 5353), ("::1", 53), ("::1", 53))
    with pytest.raises(ConfigError) as info:
        build({"dns_nameservers": ["dns.example"]})
    assert info.value.key == "dns_nameservers"


def test_smtpd_tls_cert_and_key(tmp_path: Path) -> None:
    config = build({"smtpd_tls_cert_file": "/etc/c.pem", "smtpd_tls_key_file": "k.pem"}, tmp_path)
    assert config.smtpd_tls_cert_file == Path("/etc/c.pem")
    assert config.smtpd_tls_key_file == tmp_path / "k.pem"
    # An empty value means unset.
    assert build({"smtpd_tls_cert_file": "", "smtpd_tls_key_file": ""}).smtpd_tls_cert_file is None


# ---- every error names the key (and value)


@pytest.mark.parametrize(
    ("raw", "key", "value"),
    [
        ({"relay_host": "[10.0.0.1]"}, "relay_host", "[10.0.0.1]"),
        ({"listeners": []}, "listeners", []),
        ({"maximal_queue_lifetime": "5 days"}, "maximal_queue_lifetime", "5 days"),
        ({"smtpd_timeout": "-5s"}, "smtpd_timeout", "-5s"),
        ({"minimal_backoff_time": -1}, "minimal_backoff_time", -1),
        ({"queue_run_delay": True}, "queue_run_delay", True),
        ({"listener": [{"address": "0.0.0.0:25", "tls": "ssl"}]}, "listener[0].tls", "ssl"),
        ({"mynetworks": ["10.0.0.0/8", "10.0.0.0/33"]}, "mynetworks", "10.0.0.0/33"),
        ({"mynetworks": "not-a-network"}, "mynetworks", "not-a-network"),
        ({"minimal_backoff_time": "2h", "maximal_backoff_time": "1h"}, "minimal_backoff_time", 7200.0),
        ({"minimal_backoff_time": "5000s"}, "minimal_backoff_time", 5000.0),
        ({"smtp_tls_security_level": "dane"}, "smtp_tls_security_level", "dane"),
        ({"message_size_limit": "50T"}, "message_size_limit", "50T"),
        ({"message_size_limit": -1}, "message_size_limit", -1),
        ({"smtpd_tls_cert_file": "/etc/cert.pem"}, "smtpd_tls_key_file", None),
        ({"smtpd_tls_key_file": "/etc/key.pem"}, "smtpd_tls_cert_file", None),
        ({"smtpd_recipient_limit": 0}, "smtpd_recipient_limit", 0),
        ({"smtpd_recipient_limit": "1.5"}, "smtpd_recipient_limit", "1.5"),
        ({"auto_trust_networks": "perhaps"}, "auto_trust_networks", "perhaps"),
        ({"myhostname": "my host"}, "myhostname", "my host"),
        ({"relay_domains": ["user@example.com"]}, "relay_domains", "user@example.com"),
        ({"log_level": "verbose"}, "log_level", "verbose"),
        ({"log_format": "xml"}, "log_format", "xml"),
        ({"spool_sync_method": "fdatasync"}, "spool_sync_method", "fdatasync"),
    ],
)
def test_config_error_names_key_and_value(raw: dict[str, Any], key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        build(raw)
    error = info.value
    assert error.key == key
    assert error.value == value
    assert type(error.value) is type(value)
    assert repr(key) in str(error)
    assert repr(value) in str(error)
    assert error.allowed and error.allowed in str(error)


def test_first_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        build({"zzz": 1, "aaa": 2, "relayhost": ""})
    assert info.value.key == "aaa"


def test_invalid_toml_file(tmp_path: Path) -> None:
    path = _write(tmp_path, 'relayhost = "[10.0.0.1]:25\nmynetworks = [\n')
    with pytest.raises(ConfigError) as info:
        load(path, {})
    assert info.value.key == "--config"
    assert info.value.value == str(path)
    assert str(path) in str(info.value) and "TOML" in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load(path, {})
    assert info.value.key == "--config" and str(path) in str(info.value)


def test_bad_value_in_toml_file_names_key(tmp_path: Path) -> None:
    path = _write(tmp_path, 'smtp_tls_security_level = "mandatory"\n')
    with pytest.raises(ConfigError) as info:
        load(path, {})
    assert info.value.key == "smtp_tls_security_level" and "mandatory" in str(info.value)


# ---- SASL and describe()


def test_sasl_password_maps_and_describe_hides_passwords(tmp_path: Path) -> None:
    config = build(
        {
            "smtp_sasl_password_maps": {"[Relay.Example]:587": "alice:s3cret-pw", "mx.example.net": "bob:hunter2:x"},
            "relayhost": ["[relay.example]:587"],
            "transport_maps": {"a.com": "[1.2.3.4]:25"},
            "listener": [{"name": "smtp", "address": "127.0.0.1:2525"}],
            "relay_clientcerts": [SHA256_HEX],
        },
        tmp_path,
    )
    assert dict(config.smtp_sasl_password_maps) == {
        "[relay.example]:587": ("alice", "s3cret-pw"),
        "mx.example.net": ("bob", "hunter2:x"),
    }
    text = describe(config)
    assert "s3cret-pw" not in text and "hunter2" not in text
    assert "alice:***" in text and "bob:***" in text
    lines = text.splitlines()
    assert "relayhost = [relay.example]:587" in lines
    assert "listener = smtp 127.0.0.1:2525 tls=starttls require_tls=false auth=off" in lines
    assert f"relay_clientcerts = {SHA256_HEX}" in lines
    assert "message_size_limit = 10240000" in lines
    assert any(line.startswith("transport_maps = ") and "[1.2.3.4]:25" in line for line in lines)


def test_sasl_credentials_error_does_not_show_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        build({"smtp_sasl_password_maps": {"[relay]:587": "justapassword"}})
    assert info.value.key == "smtp_sasl_password_maps.[relay]:587"
    assert "justapassword" not in str(info.value)


def test_config_is_immutable() -> None:
    config = build({})
    with pytest.raises(AttributeError):
        config.myhostname = "x"  # type: ignore[misc]
    assert isinstance(config, Config)


# ---- GATEWAY_LISTEN: listeners without a config file


def test_gateway_listen_replaces_the_listener_tables(tmp_path: Path) -> None:
    path = _write(tmp_path, '[[listener]]\nname = "smtp"\naddress = "0.0.0.0:25"\n')
    config = load(
        path,
        {
            "GATEWAY_LISTEN": "smtp=127.0.0.1:2525/starttls smtps=[::1]:2465/implicit, "
            "submission=0.0.0.0:2587/starttls/require_tls"
        },
    )
    assert config.listeners == (
        ListenerConfig("smtp", "127.0.0.1", 2525, "starttls", False),
        ListenerConfig("smtps", "::1", 2465, "implicit", False),
        ListenerConfig("submission", "0.0.0.0", 2587, "starttls", True),
    )
    assert load(path, {"GATEWAY_LISTEN": "  "}).listeners == (ListenerConfig("smtp", "0.0.0.0", 25),)


@pytest.mark.parametrize(
    "text",
    [
        "smtp=0.0.0.0:25",
        "smtp=0.0.0.0/starttls",
        "=0.0.0.0:25/none",
        "smtp=0.0.0.0:25/none/required",
        "smtp=0.0.0.0:70000/none",
        "a=127.0.0.1:1/none a=127.0.0.1:2/none",
    ],
)
def test_a_bad_gateway_listen_names_the_variable(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, {"GATEWAY_LISTEN": text})
    assert info.value.key == "GATEWAY_LISTEN"


def test_event_loop_key_takes_uvloop_or_asyncio() -> None:
    assert build({}).event_loop == "uvloop"
    assert build({"event_loop": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(ConfigError, match="event_loop"):
        build({"event_loop": "trio"})


def test_recipient_keys() -> None:
    config = build(
        {"virtual_alias_maps": "virtual, more", "relay_recipient_maps": ["/etc/r"], "recipient_delimiter": "+-"},
        base_dir=Path("/base"),
    )
    assert config.virtual_alias_maps == (Path("/base/virtual"), Path("/base/more"))
    assert config.relay_recipient_maps == (Path("/etc/r"),) and config.recipient_delimiter == "+-"
    assert build({"recipient_delimiter": ""}).recipient_delimiter == ""
    for bad in ("a b", "@", 5):
        with pytest.raises(ConfigError) as raised:
            build({"recipient_delimiter": bad})
        assert raised.value.key == "recipient_delimiter"


def test_upstream_proxy_keys() -> None:
    listener = {"name": "smtp", "address": "0.0.0.0:25", "tls": "starttls", "upstream_proxy_protocol": "haproxy"}
    with pytest.raises(ConfigError) as raised:
        build({"listener": [listener]})
    assert raised.value.key == "upstream_proxy_networks"
    config = build({"listener": [listener], "upstream_proxy_networks": ["10.0.0.0/24"]})
    assert config.listeners[0].upstream_proxy_protocol == "haproxy"
    assert config.upstream_proxy_networks == (parse_network("10.0.0.0/24"),)
    implicit = build({"listener": [{**listener, "tls": "implicit"}], "upstream_proxy_networks": ["10.0.0.0/24"]})
    assert implicit.listeners[0].upstream_proxy_protocol == "haproxy"  # the header is read before the handshake
    with pytest.raises(ConfigError) as raised:
        build({"listener": [{**listener, "upstream_proxy_protocol": "v3"}]})
    assert raised.value.key == "listener[0].upstream_proxy_protocol"
