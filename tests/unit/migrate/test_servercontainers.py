"""gateway.migrate.servercontainers: every ServerContainers variable is mapped or refused;
the TOML writer round-trips."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
import trustme

from gateway.config import build, load
from gateway.migrate import servercontainers as seed_env
from gateway.migrate.servercontainers import IMAGE_VARIABLES, Refused, to_toml, translate

SHA1 = "AA:BB:CC:DD:EE:FF:12:34:56:67:2E:FB:3F:34:99:90:AB:CD:EF:4C"  # the image README's example
SHA256 = ":".join(["AB"] * 32)
NO_SCANNERS = {"DISABLE_AMAVIS": "1"}
DEPLOY_README = Path(__file__).resolve().parents[3] / "deploy" / "README.md"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty container root: no /etc/postfix volume files unless a test adds them."""
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


def put(root: Path, path: str, text: str = "x\n") -> Path:
    """Create ``root/path`` (a volume file of the image)."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def run(root: Path, **env: str) -> tuple[dict, list[str]]:
    environ = {"MAIL_FQDN": "mx.example.com", **NO_SCANNERS}
    environ.update(env)
    return translate({k: v for k, v in environ.items() if v is not None}, root=root)


def refused(root: Path, **env: str) -> dict[str, str]:
    with pytest.raises(Refused) as caught:
        run(root, **env)
    return {r.variable: r.reason for r in caught.value.refusals}


def listener(config: dict, name: str) -> dict:
    return next(item for item in config["listener"] if item["name"] == name)


# ---- host name, banner ----


def test_mail_fqdn_becomes_myhostname(root):
    config, warnings = run(root, MAIL_FQDN="MX.Example.COM.")
    assert config["myhostname"] == "mx.example.com" and not warnings


def test_a_bare_host_name_gets_dot_local_as_in_the_image(root):
    config, warnings = run(root, MAIL_FQDN="gateway")
    assert config["myhostname"] == "gateway.local"
    assert any("'.local' appended" in w for w in warnings)


def test_unset_mail_fqdn_takes_the_image_default_with_a_warning():
    config, warnings = translate(NO_SCANNERS, root=Path("/nonexistent"))
    assert config["myhostname"] == "amavis.mail-gateway"
    assert any("MAIL_FQDN is unset" in w for w in warnings)


def test_a_mail_fqdn_the_image_would_have_mangled_is_refused(root):
    assert "not a host name" in refused(root, MAIL_FQDN="mail_gw.example.com")["MAIL_FQDN"]


@pytest.mark.parametrize("banner", ["mx.example.com ESMTP", "$myhostname ESMTP", "${myhostname} ESMTP"])
def test_the_banner_is_honoured_when_it_is_the_gateways_own(root, banner):
    config, _ = run(root, POSTFIX_SMTPD_BANNER=banner)
    assert "smtpd_banner" not in config


def test_any_other_banner_is_refused(root):
    reason = refused(root, POSTFIX_SMTPD_BANNER="$myhostname ESMTP Postfix (Debian)")["POSTFIX_SMTPD_BANNER"]
    assert "220 mx.example.com ESMTP" in reason


# ---- networks, relayhost ----


def test_mynetworks_defaults_to_loopback_like_the_image(root):
    config, _ = run(root)
    assert config["mynetworks"] == ["127.0.0.0/8"] and config["auto_trust_networks"] is False


def test_additional_mynetworks_are_appended(root):
    config, _ = run(root, ADDITIONAL_MYNETWORKS="10.0.0.0/8, 192.168.1.0/24 [2001:db8::]/32")
    assert config["mynetworks"] == ["127.0.0.0/8", "10.0.0.0/8", "192.168.1.0/24", "[2001:db8::]/32"]
    build(config)


def test_mynetworks_replaces_everything_including_auto_trust(root):
    config, warnings = run(
        root, MYNETWORKS="172.16.0.0/12", ADDITIONAL_MYNETWORKS="10.0.0.0/8", AUTO_TRUST_NETWORKS="yes"
    )
    assert config["mynetworks"] == ["172.16.0.0/12"]
    assert config["auto_trust_networks"] is False
    assert any("ADDITIONAL_MYNETWORKS is ignored" in w for w in warnings)
    assert any("AUTO_TRUST_NETWORKS is ignored" in w for w in warnings)


@pytest.mark.parametrize("value", ["1", "true", "anything"])
def test_auto_trust_networks_any_value_turns_it_on(root, value):
    config, warnings = run(root, AUTO_TRUST_NETWORKS=value)
    assert config["auto_trust_networks"] is True and not warnings


@pytest.mark.parametrize("value", ["", "false", "0"])
def test_auto_trust_networks_set_but_false_looking_is_on_as_in_the_image_with_a_warning(root, value):
    config, warnings = run(root, AUTO_TRUST_NETWORKS=value)
    assert config["auto_trust_networks"] is True
    assert any("AUTO_TRUST_NETWORKS" in w and "is set, so it is ON" in w for w in warnings)


def test_a_bad_network_is_refused_with_the_variable(root):
    reasons = refused(root, ADDITIONAL_MYNETWORKS="10.0.0.0/33")
    assert "mynetworks" in reasons["ADDITIONAL_MYNETWORKS"]


def test_postfix_tables_in_mynetworks_are_refused(root):
    assert "lookup tables" in refused(root, MYNETWORKS="hash:/etc/postfix/network_table")["MYNETWORKS"]
    assert "'!' exclusions" in refused(root, MYNETWORKS="!10.1.0.0/16 10.0.0.0/8")["MYNETWORKS"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[smtp.example.com]:587", ["[smtp.example.com]:587"]),
        ("smtp.example.com", ["smtp.example.com"]),
        ("[a.example.net]:25, [b.example.net]:25", ["[a.example.net]:25", "[b.example.net]:25"]),
        ("", []),
    ],
)
def test_relayhost_postfix_syntax(root, value, expected):
    config, _ = run(root, RELAYHOST=value)
    assert config["relayhost"] == expected
    assert [str(hop) for hop in build(config).relayhost] == expected


def test_unset_relayhost_means_direct_mx(root):
    assert "relayhost" not in run(root)[0]


def test_a_bad_relayhost_is_refused(root):
    assert "port 99999" in refused(root, RELAYHOST="[smtp.example.com]:99999")["RELAYHOST"]


# ---- TLS ----


def test_incoming_and_outgoing_certificates_from_variables(root):
    for name in ("certs/in.crt", "certs/in.key", "certs/out.crt", "certs/out.key"):
        put(root, name)
    config, _ = run(
        root,
        POSTFIX_SSL_IN_CERT="/certs/in.crt",
        POSTFIX_SSL_IN_KEY="/certs/in.key",
        POSTFIX_SSL_OUT_CERT="/certs/out.crt",
        POSTFIX_SSL_OUT_KEY="/certs/out.key",
    )
    assert (config["smtpd_tls_cert_file"], config["smtpd_tls_key_file"]) == (
        str(root / "certs/in.crt"),
        str(root / "certs/in.key"),
    )
    assert (config["smtp_tls_cert_file"], config["smtp_tls_key_file"]) == (
        str(root / "certs/out.crt"),
        str(root / "certs/out.key"),
    )


def test_certificates_at_the_image_default_paths_are_used(root):
    for name in ("bundle.crt", "cert.key", "client.crt", "client.key"):
        put(root, f"/etc/postfix/tls/{name}")
    config, _ = run(root)
    assert config["smtpd_tls_cert_file"] == str(root / "etc/postfix/tls/bundle.crt")
    assert config["smtpd_tls_key_file"] == str(root / "etc/postfix/tls/cert.key")
    assert config["smtp_tls_cert_file"] == str(root / "etc/postfix/tls/client.crt")
    assert config["smtp_tls_key_file"] == str(root / "etc/postfix/tls/client.key")


def test_no_certificate_files_leaves_tls_to_the_generated_certificate(root):
    config, _ = run(root)
    assert not {"smtpd_tls_cert_file", "smtp_tls_cert_file", "smtpd_tls_CAfile"} & set(config)


def test_a_named_certificate_that_is_missing_is_refused(root):
    put(root, "/etc/postfix/tls/cert.key")
    reason = refused(root, POSTFIX_SSL_IN_CERT="/certs/missing.crt")["POSTFIX_SSL_IN_CERT"]
    assert "/certs/missing.crt" in reason and "not found" in reason


@pytest.mark.parametrize(("level", "smtp_require", "tls"), [("may", False, "starttls"), ("encrypt", True, "starttls")])
def test_incoming_security_level_shapes_the_listeners(root, level, smtp_require, tls):
    config, _ = run(root, POSTFIX_SSL_IN_SECURITY_LEVEL=level)
    assert listener(config, "smtp") == {
        "name": "smtp",
        "address": "0.0.0.0:25",
        "tls": tls,
        "require_tls": smtp_require,
    }
    assert listener(config, "smtps")["tls"] == "implicit"
    assert listener(config, "submission")["require_tls"] is True
    assert [(item.name, item.port) for item in build(config).listeners] == [
        ("smtp", 25),
        ("smtps", 465),
        ("submission", 587),
    ]


def test_incoming_security_level_none_turns_tls_off(root):
    config, warnings = run(root, POSTFIX_SSL_IN_SECURITY_LEVEL="none")
    assert {item["tls"] for item in config["listener"]} == {"none"}
    assert all(item["name"] != "smtps" for item in config["listener"])
    assert warnings


@pytest.mark.parametrize("variable", ["POSTFIX_SSL_IN_SECURITY_LEVEL", "POSTFIX_SSL_OUT_SECURITY_LEVEL"])
def test_dane_levels_are_refused(root, variable):
    assert "'dane'" in refused(root, **{variable: "dane"})[variable]


@pytest.mark.parametrize("level", ["none", "may", "encrypt", "verify"])
def test_outgoing_security_level(root, level):
    config, _ = run(root, POSTFIX_SSL_OUT_SECURITY_LEVEL=level.upper())
    assert config["smtp_tls_security_level"] == level
    assert build(config).smtp_tls_security_level == level


# ---- client certificates ----


def test_fingerprints_newline_and_comma_separated_become_relay_clientcerts(root):
    put(root, "/etc/postfix/tls/rootCA.crt")
    config, warnings = run(
        root,
        POSTFIX_SSL_IN_CERT_FINGERPRINTS=f"{SHA1} trusted.mailserver.example.tld\n{SHA256} a.example, {SHA1.lower()}",
    )
    assert config["relay_clientcerts"] == [
        f"{SHA1} trusted.mailserver.example.tld",
        f"{SHA256} a.example",
        SHA1.lower(),
    ]
    assert config["smtpd_tls_CAfile"] == str(
        root / "etc/postfix/tls/rootCA.crt"
    )  # the file found, not the container path
    assert build(config).relay_clientcerts == {SHA1.replace(":", "").lower(), SHA256.replace(":", "").lower()}
    assert any("permit_tls_all_clientcerts" in w for w in warnings)


def test_the_relay_clientcerts_file_of_the_volume_is_read_too(root):
    put(root, "/etc/postfix/tls/rootCA.crt")
    put(root, "/etc/postfix/tls/relay_clientcerts", f"# comment\n{SHA256} b.example\n")
    config, _ = run(root, POSTFIX_SSL_IN_CERT_FINGERPRINTS=SHA1)
    assert config["relay_clientcerts"] == [f"{SHA256} b.example", SHA1]


def test_fingerprints_without_a_ca_bundle_are_refused(root):
    reason = refused(root, POSTFIX_SSL_IN_CERT_FINGERPRINTS=SHA1)["POSTFIX_SSL_IN_CERT_FINGERPRINTS"]
    assert "rootCA.crt" in reason


def test_md5_fingerprints_are_refused(root):
    put(root, "/etc/postfix/tls/rootCA.crt")
    md5 = ":".join(["AB"] * 16)
    reason = refused(root, POSTFIX_SSL_IN_CERT_FINGERPRINTS=md5)["POSTFIX_SSL_IN_CERT_FINGERPRINTS"]
    assert "SHA-256 or SHA-1" in reason


def test_a_root_ca_alone_is_refused_because_it_let_every_certificate_relay(root):
    put(root, "/etc/postfix/tls/rootCA.crt")
    assert "permit_tls_all_clientcerts" in refused(root)["/etc/postfix/tls/rootCA.crt"]


# ---- queue lifetimes, relay domains, mydestination ----


@pytest.mark.parametrize(
    ("value", "written", "seconds"),
    [("3d", "3d", 3 * 86400), ("7", "7d", 7 * 86400), ("12h", "12h", 12 * 3600), ("0", "0d", 0)],
)
def test_queue_lifetimes_with_postfix_day_default(root, value, written, seconds):
    config, _ = run(root, POSTFIX_QUEUE_LIFETIME_MAX=value, POSTFIX_QUEUE_LIFETIME_BOUNCE=value)
    assert config["maximal_queue_lifetime"] == config["bounce_queue_lifetime"] == written
    parsed = build(config)
    assert parsed.maximal_queue_lifetime == parsed.bounce_queue_lifetime == seconds


def test_a_bad_lifetime_is_refused(root):
    assert "maximal_queue_lifetime" in refused(root, POSTFIX_QUEUE_LIFETIME_MAX="soon")["POSTFIX_QUEUE_LIFETIME_MAX"]


def test_relay_domains(root):
    config, warnings = run(root, POSTFIX_RELAY_DOMAINS="example.com, .example.com example.org")
    assert config["relay_domains"] == ["example.com", ".example.com", "example.org"]
    assert any("subdomains" in w for w in warnings)


def test_relay_domains_tables_are_refused(root):
    assert "lookup tables" in refused(root, POSTFIX_RELAY_DOMAINS="hash:/etc/postfix/relay")["POSTFIX_RELAY_DOMAINS"]
    assert "lookup tables" in refused(root, POSTFIX_RELAY_DOMAINS="$mydestination")["POSTFIX_RELAY_DOMAINS"]


def test_mydestination_is_refused_unless_empty(root):
    run(root, POSTFIX_MYDESTINATION="")
    assert "no mail locally" in refused(root, POSTFIX_MYDESTINATION="example.com")["POSTFIX_MYDESTINATION"]


# ---- scanning ----


def test_disable_amavis_turns_scanning_off_and_needs_no_scanner(root):
    config, _ = run(root, DISABLE_AMAVIS="true")
    assert config["content_filter"] == {"disable_scanning": True}
    assert "pipeline" not in config and "spam_levels" not in config


def test_disable_virus_and_spam_checks(root):
    config, _ = translate(
        {"MAIL_FQDN": "mx.example.com", "DISABLE_VIRUS_CHECKS": "1", "DISABLE_SPAM_CHECKS": "1"}, root=root
    )
    assert config["content_filter"] == {"disable_virus_checks": True, "disable_spam_checks": True}


def test_scanning_that_was_on_in_the_image_needs_external_scanners(root):
    with pytest.raises(Refused) as caught:
        translate({"MAIL_FQDN": "mx.example.com"}, root=root)
    reasons = {r.variable: r.reason for r in caught.value.refusals}
    assert "CLAMD_ADDRESS" in reasons["DISABLE_VIRUS_CHECKS"]
    assert "RSPAMD_URL" in reasons["DISABLE_SPAM_CHECKS"]


def test_scanners_run_in_both_directions_with_the_image_spam_levels(root):
    config, _ = translate(
        {
            "MAIL_FQDN": "mx.example.com",
            "CLAMD_ADDRESS": "tcp:clamav:3310",
            "RSPAMD_URL": "http://rspamd:11333",
            "SPAMD_ADDRESS": "spamd:783",
        },
        root=root,
    )
    assert config["antivirus"] == {"clamd": "tcp:clamav:3310"}
    assert config["rspamd"] == {"url": "http://rspamd:11333"}
    assert config["spamassassin"] == {"address": "spamd:783"}
    assert config["pipeline"] == {
        "inbound": ["antivirus", "rspamd", "spamassassin"],
        "outbound": ["antivirus", "rspamd", "spamassassin"],
    }
    assert config["spam_levels"] == {"tag_level": -999.0, "tag2_level": 5.0, "kill_level": 20.0}
    assert "content_filter" not in config


def test_only_spam_scanning_with_virus_checks_disabled(root):
    config, _ = translate(
        {"MAIL_FQDN": "mx.example.com", "DISABLE_VIRUS_CHECKS": "", "RSPAMD_URL": "http://rspamd:11333"}, root=root
    )
    assert config["pipeline"]["inbound"] == ["rspamd"]
    assert config["content_filter"] == {"disable_virus_checks": True}


def test_a_bad_clamd_address_is_refused(root):
    assert "antivirus.clamd" in refused(root, CLAMD_ADDRESS="clamav:3310")["CLAMD_ADDRESS"]


def test_amavis_levels_become_spam_levels(root):
    config, _ = translate(
        {
            "MAIL_FQDN": "mx.example.com",
            "RSPAMD_URL": "http://rspamd:11333",
            "DISABLE_VIRUS_CHECKS": "1",
            "AMAVIS_SA_TAG_LEVEL_DEFLT": "2",
            "AMAVIS_SA_TAG2_LEVEL_DEFLT": "6.31",
            "AMAVIS_SA_KILL_LEVEL_DEFLT": "10",
        },
        root=root,
    )
    assert config["spam_levels"] == {"tag_level": 2.0, "tag2_level": 6.31, "kill_level": 10.0}
    assert all(isinstance(v, float) for v in config["spam_levels"].values())


@pytest.mark.parametrize(
    ("variable", "value", "text"),
    [
        ("AMAVIS_SA_KILL_LEVEL_DEFLT", "undef", "tag level only"),
        ("AMAVIS_SA_TAG2_LEVEL_DEFLT", "high", "not a number"),
        ("AMAVIS_SA_TAG2_LEVEL_DEFLT", "25", "at most kill_level"),
    ],
)
def test_bad_amavis_levels_are_refused(root, variable, value, text):
    env = {
        "MAIL_FQDN": "mx.example.com",
        "RSPAMD_URL": "http://rspamd:11333",
        "DISABLE_VIRUS_CHECKS": "1",
        variable: value,
    }
    with pytest.raises(Refused) as caught:
        translate(env, root=root)
    reasons = {r.variable: r.reason for r in caught.value.refusals}
    assert variable in reasons or "AMAVIS_SA_KILL_LEVEL_DEFLT" in reasons, reasons
    assert text in " ".join(reasons.values())


def test_amavis_levels_are_ignored_with_amavis_disabled_as_in_the_image(root):
    config, warnings = run(root, AMAVIS_SA_KILL_LEVEL_DEFLT="3")
    assert "spam_levels" not in config and any("ignored" in w for w in warnings)


# ---- volume files ----


def test_header_checks_file_runs_first_in_both_directions(root):
    put(root, "/etc/postfix/additional/header_checks", "/^Subject: .*viagra/ REJECT no thanks\n")
    config, _ = translate(
        {"MAIL_FQDN": "mx.example.com", "CLAMD_ADDRESS": "tcp:clamav:3310", "DISABLE_SPAM_CHECKS": "1"}, root=root
    )
    assert config["header_checks"] == {"file": str(root / "etc/postfix/additional/header_checks")}
    assert config["pipeline"]["inbound"] == config["pipeline"]["outbound"] == ["header_checks", "antivirus"]


def test_a_bad_header_checks_file_is_refused_by_its_name(root):
    put(root, "/etc/postfix/additional/header_checks", "/(unclosed/ REJECT\n")
    assert "/etc/postfix/additional/header_checks" in refused(root)


def test_transport_file_becomes_transport_maps(root):
    put(
        root,
        "/etc/postfix/additional/transport",
        "# routes\nexample.com smtp:[10.0.0.5]:25\n.example.com   relay:[10.0.0.6]\nexample.org :[10.0.0.7]:2525\n",
    )
    config, _ = run(root)
    assert config["transport_maps"] == {
        "example.com": "[10.0.0.5]:25",
        ".example.com": "[10.0.0.6]",
        "example.org": "[10.0.0.7]:2525",
    }
    assert str(build(config).transport_maps["example.org"][0]) == "[10.0.0.7]:2525"


@pytest.mark.parametrize(
    ("line", "text"),
    [
        ("example.com error:no mail here", "SMTP only"),
        ("user@example.com smtp:[10.0.0.5]", "recipient domain only"),
        ("example.com smtp:", "without a next hop"),
    ],
)
def test_transport_entries_the_gateway_cannot_route_are_refused_by_file_and_line(root, line, text):
    put(root, "/etc/postfix/additional/transport", f"ok.example smtp:[10.0.0.5]\n{line}\n")
    assert text in refused(root)["/etc/postfix/additional/transport:2"]


def test_dh_parameter_files_are_not_needed(root):
    put(root, "/etc/postfix/tls/dh1024.pem")
    _, warnings = run(root)
    assert any("dh1024.pem is not used" in w for w in warnings)


# ---- DKIM ----


def test_dkim_domains_space_and_comma_separated(root):
    config, warnings = run(root, DKIM_DOMAINS="example.com, example.org  example.net")
    assert config["dkim"] == {"domains": ["example.com", "example.org", "example.net"], "selector": "default"}
    assert any("opendkim" in w for w in warnings)


def test_existing_opendkim_keys_are_reused(root):
    put(root, "/etc/postfix/additional/opendkim/keys/example.com/default.private", "key")
    config, warnings = run(root, DKIM_DOMAINS="example.com example.org")
    assert config["dkim"]["domain"] == {
        "example.com": {"rsa_key": str(root / "etc/postfix/additional/opendkim/keys/example.com/default.private")}
    }
    assert any("no key" in w and "example.org" in w for w in warnings)


def test_a_bad_dkim_domain_is_refused(root):
    assert "dkim.domains" in refused(root, DKIM_DOMAINS="localhost")["DKIM_DOMAINS"]


# ---- refusals of what the gateway has no equivalent for ----


def test_raw_postfix_config_is_refused_with_a_hint(root):
    reasons = refused(
        root,
        POSTFIX_RAW_CONFIG_MESSAGE_SIZE_LIMIT="52428800",
        POSTFIX_RAW_CONFIG_SMTPD_HELO_RESTRICTIONS="reject_invalid_helo_hostname",
    )
    assert "GATEWAY_MESSAGE_SIZE_LIMIT" in reasons["POSTFIX_RAW_CONFIG_MESSAGE_SIZE_LIMIT"]
    assert "not interpreted" in reasons["POSTFIX_RAW_CONFIG_SMTPD_HELO_RESTRICTIONS"]


@pytest.mark.parametrize(
    "name", ["POSTFIX_RELAY_DOMAIN", "DKIM_VERIFICATION", "DISABLE_CLAMAV", "AMAVIS_SA_SPAM_SUBJECT_TAG"]
)
def test_unknown_variables_in_the_images_namespaces_are_refused(root, name):
    assert "not a variable of the ServerContainers" in refused(root, **{name: "1"})[name]


def test_other_environment_variables_are_ignored(root):
    config, _ = run(root, PATH="/usr/bin", HOME="/root", TZ="Europe/Berlin", GATEWAY_RELAYHOST="[x]:25")
    assert "relayhost" not in config


def test_all_refusals_are_reported_at_once(root):
    with pytest.raises(Refused) as caught:
        translate({"POSTFIX_MYDESTINATION": "a", "POSTFIX_SMTPD_BANNER": "hi", "MYNETWORKS": "hash:/x"}, root=root)
    assert {r.variable for r in caught.value.refusals} >= {
        "POSTFIX_MYDESTINATION",
        "POSTFIX_SMTPD_BANNER",
        "MYNETWORKS",
        "DISABLE_VIRUS_CHECKS",
    }


def test_every_image_variable_is_in_the_migration_table():
    text = DEPLOY_README.read_text()
    for name in (*IMAGE_VARIABLES, "POSTFIX_RAW_CONFIG_", "CLAMD_ADDRESS", "RSPAMD_URL", "SPAMD_ADDRESS"):
        assert f"`{name}" in text, name


# ---- the TOML writer ----


def test_toml_round_trip_of_awkward_values():
    data = {
        "plain": "x",
        "quote": 'say "hi"',
        "backslash": "C:\\path\\",
        "newline": "a\nb\r\tc",
        "control": "\x00\x01\x1f\x7f",
        "unicode": "Grüße ✉ \U0001f4e7",
        "empty": "",
        "int": 0,
        "negative": -42,
        "big": 2**62,
        "float": 5.0,
        "small": 1e-05,
        "neg_float": -999.0,
        "huge": 1.5e300,
        "inf": math.inf,
        "ninf": -math.inf,
        "true": True,
        "false": False,
        "list": ["a", "b"],
        "empty_list": [],
        "numbers": [1, 2.5, -3],
        "nested": [[1, 2], ["x"]],
        "inline": [{"a": 1}, "mixed"],
        "key with spaces": 1,
        "dotted.key": 2,
        "ünïcode": 3,
        "": 4,
        "table": {"k": "v", "sub": {"deep": {"x": 1}}, "example.com": {"rsa_key": "/k"}},
        "empty_table": {},
        "listener": [{"name": "a", "tls": {"mode": "x"}}, {"name": "b"}],
    }
    text = to_toml(data)
    assert tomllib.loads(text) == data


def test_toml_round_trip_of_nan():
    assert math.isnan(tomllib.loads(to_toml({"x": math.nan}))["x"])


def test_toml_writer_refuses_unknown_types():
    with pytest.raises(TypeError):
        to_toml({"x": None})


def test_toml_round_trip_of_a_full_translation(root):
    put(root, "/etc/postfix/tls/rootCA.crt")
    put(root, "/etc/postfix/additional/transport", "example.com smtp:[10.0.0.5]:25\n")
    put(root, "/etc/postfix/additional/opendkim/keys/example.com/default.private")
    config, _ = translate(
        {
            "MAIL_FQDN": "mx.example.com",
            "RELAYHOST": "[smtp.example.com]:587",
            "POSTFIX_SSL_IN_CERT_FINGERPRINTS": f'{SHA1} host "quoted"',
            "CLAMD_ADDRESS": "tcp:clamav:3310",
            "RSPAMD_URL": "http://rspamd:11333",
            "DKIM_DOMAINS": "example.com",
            "POSTFIX_QUEUE_LIFETIME_MAX": "3",
        },
        root=root,
    )
    assert tomllib.loads(to_toml(config)) == config


# ---- main ----


@pytest.fixture
def environ(monkeypatch):
    """os.environ without any variable of the image's namespaces; returns a setter."""
    import os

    for name in list(os.environ):
        if name.startswith(
            seed_env.IMAGE_NAMESPACES + seed_env.SCANNER_VARIABLES + ("MAIL_FQDN", "RELAYHOST", "MYNETWORKS")
        ):
            monkeypatch.delenv(name)
    for name in ("ADDITIONAL_MYNETWORKS", "AUTO_TRUST_NETWORKS"):
        monkeypatch.delenv(name, raising=False)
    return lambda **values: [monkeypatch.setenv(k, v) for k, v in values.items()]


def test_main_writes_a_config_the_gateway_loads(environ, root, tmp_path, capsys):
    ca = trustme.CA()
    put(root, "/etc/postfix/tls/rootCA.crt", ca.cert_pem.bytes().decode())
    environ(
        MAIL_FQDN="mx.example.com",
        RELAYHOST="[smtp.example.com]:587",
        CLAMD_ADDRESS="tcp:clamav:3310",
        RSPAMD_URL="http://rspamd:11333",
        POSTFIX_SSL_IN_CERT_FINGERPRINTS=SHA256,
        POSTFIX_RELAY_DOMAINS="example.com",
    )
    output = tmp_path / "etc" / "gateway.toml"
    assert seed_env.main(["--output", str(output), "--root", str(root), "--state-dir", str(tmp_path / "state")]) == 0
    text = output.read_text()
    assert text.startswith("# Generated by `python -m gateway.migrate.servercontainers`")
    assert "# warning: " in text and "warning:" in capsys.readouterr().err
    config = load(output, environ={})
    assert config.myhostname == "mx.example.com"
    assert [str(h) for h in config.relayhost] == ["[smtp.example.com]:587"]
    assert config.metrics_listen == ("0.0.0.0", 9464)
    assert config.section("pipeline")["inbound"] == ["antivirus", "rspamd"]
    assert seed_env.main(["--output", str(output), "--root", str(root)]) == 1  # exists: not replaced
    assert "--force" in capsys.readouterr().err
    assert (
        seed_env.main(["--output", str(output), "--root", str(root), "--force", "--state-dir", str(tmp_path / "state")])
        == 0
    )


def test_main_refuses_with_exit_2_naming_each_variable(environ, root, tmp_path, capsys):
    environ(
        MAIL_FQDN="mx.example.com",
        DISABLE_AMAVIS="1",
        POSTFIX_MYDESTINATION="example.com",
        POSTFIX_RAW_CONFIG_INET_PROTOCOLS="ipv4",
    )
    output = tmp_path / "gateway.toml"
    assert seed_env.main(["--output", str(output), "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "refused POSTFIX_MYDESTINATION: " in err and "refused POSTFIX_RAW_CONFIG_INET_PROTOCOLS: " in err
    assert "ipv4" not in err  # raw values may hold secrets: never echoed
    assert not output.exists()


def test_main_writes_to_stdout(environ, root, capsys):
    environ(MAIL_FQDN="mx.example.com", DISABLE_AMAVIS="1")
    assert seed_env.main(["--output", "-", "--root", str(root)]) == 0
    assert tomllib.loads(capsys.readouterr().out)["myhostname"] == "mx.example.com"


# ---- --root: the config names the files found there ----


def test_with_root_every_file_written_is_the_one_found_under_root(root):
    ca = trustme.CA()
    server = ca.issue_cert("mx.example.com")
    ca.cert_pem.write_to_path(str(put(root, "/etc/postfix/tls/rootCA.crt")))
    server.cert_chain_pems[0].write_to_path(str(put(root, "/etc/postfix/tls/bundle.crt")))
    server.private_key_pem.write_to_path(str(put(root, "/etc/postfix/tls/cert.key")))
    put(root, "/etc/postfix/additional/header_checks", "/^Subject: spam/ REJECT\n")
    config, _ = run(root, POSTFIX_SSL_IN_CERT_FINGERPRINTS=SHA1)
    written = {key: config[key] for key in ("smtpd_tls_CAfile", "smtpd_tls_cert_file", "smtpd_tls_key_file")}
    written["header_checks.file"] = config["header_checks"]["file"]
    for key, value in written.items():
        assert value.startswith(str(root) + "/etc/postfix/"), (key, value)
        assert Path(value).is_file(), (key, value)
    # ... so the gateway started from this config on the host finds them
    parsed = build(tomllib.loads(to_toml(config)))
    assert parsed.smtpd_tls_CAfile == root / "etc/postfix/tls/rootCA.crt"


def test_without_root_the_container_paths_are_written(tmp_path, monkeypatch):
    found = {"/etc/postfix/tls/rootCA.crt"}
    monkeypatch.setattr(seed_env.Translator, "exists", lambda self, path: str(path) in found)
    config, _ = translate({"MAIL_FQDN": "mx.example.com", **NO_SCANNERS, "POSTFIX_SSL_IN_CERT_FINGERPRINTS": SHA1})
    assert config["smtpd_tls_CAfile"] == "/etc/postfix/tls/rootCA.crt"


# ---- listeners from --listen / GATEWAY_LISTEN ----


def test_listen_moves_the_listeners(root):
    config, _ = translate(
        {"MAIL_FQDN": "mx.example.com", **NO_SCANNERS},
        root=root,
        listen="smtp=127.0.0.1:2525/starttls, smtps=[::1]:2465/implicit submission=0.0.0.0:2587/starttls/require_tls",
    )
    assert config["listener"] == [
        {"name": "smtp", "address": "127.0.0.1:2525", "tls": "starttls", "require_tls": False},
        {"name": "smtps", "address": "[::1]:2465", "tls": "implicit", "require_tls": False},
        {"name": "submission", "address": "0.0.0.0:2587", "tls": "starttls", "require_tls": True},
    ]
    assert [(item.name, item.host, item.port) for item in build(config).listeners] == [
        ("smtp", "127.0.0.1", 2525),
        ("smtps", "::1", 2465),
        ("submission", "0.0.0.0", 2587),
    ]


def test_listen_with_the_encrypt_level_requires_tls_on_starttls_listeners(root):
    config, _ = translate(
        {"MAIL_FQDN": "mx.example.com", **NO_SCANNERS, "POSTFIX_SSL_IN_SECURITY_LEVEL": "encrypt"},
        root=root,
        listen="smtp=0.0.0.0:2525/starttls smtps=0.0.0.0:2465/implicit",
    )
    assert [item["require_tls"] for item in config["listener"]] == [True, False]


def test_a_tls_listener_with_the_none_level_is_refused(root):
    with pytest.raises(Refused) as caught:
        translate(
            {"MAIL_FQDN": "mx.example.com", **NO_SCANNERS, "POSTFIX_SSL_IN_SECURITY_LEVEL": "none"},
            root=root,
            listen="smtps=0.0.0.0:2465/implicit",
            listen_origin="GATEWAY_LISTEN",
        )
    (refusal,) = caught.value.refusals
    assert refusal.variable == "GATEWAY_LISTEN" and "tls=implicit" in refusal.reason


@pytest.mark.parametrize(
    "listen",
    [
        "smtp=0.0.0.0:99999/starttls",
        "smtp=0.0.0.0:25",
        "smtp:0.0.0.0:25/none",
        "smtp=0.0.0.0:25/sometimes",
        "a=0.0.0.0:25/none a=0.0.0.0:26/none",
    ],
)
def test_a_bad_listen_list_is_refused_naming_it(root, listen):
    with pytest.raises(Refused) as caught:
        translate(
            {"MAIL_FQDN": "mx.example.com", **NO_SCANNERS}, root=root, listen=listen, listen_origin="GATEWAY_LISTEN"
        )
    assert [r.variable for r in caught.value.refusals] == ["GATEWAY_LISTEN"]


def test_main_takes_gateway_listen_from_the_environment(monkeypatch, capsys, tmp_path):
    for name in list(__import__("os").environ):
        if name.startswith(("POSTFIX_", "DKIM_", "AMAVIS_", "DISABLE_", "GATEWAY_", "MAIL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MAIL_FQDN", "mx.example.com")
    monkeypatch.setenv("DISABLE_AMAVIS", "1")
    monkeypatch.setenv("GATEWAY_LISTEN", "smtp=0.0.0.0:2525/starttls")
    assert seed_env.main(["--output", "-", "--root", str(tmp_path)]) == 0
    written = tomllib.loads(capsys.readouterr().out)
    assert written["listener"] == [{"name": "smtp", "address": "0.0.0.0:2525", "tls": "starttls", "require_tls": False}]
    # the option wins over the variable
    assert seed_env.main(["--output", "-", "--root", str(tmp_path), "--listen", "in=127.0.0.1:26/none"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["listener"][0]["name"] == "in"
