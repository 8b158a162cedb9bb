"""Every Prometheus metric of the gateway, in one registry.

Names follow Prometheus conventions: prefix ``gateway_``, base units
(seconds, bytes), ``_total`` counters, ``_seconds`` histograms. Label values
come from bounded sets only: listener names, policy names and reason tokens
set in code, next hops from the configuration (direct MX delivery is ``mx``),
DKIM domains from the configuration; never an address or a queue ID.

Queue gauges are computed at scrape time from the spool directories, so they
are right even for changes made by ``gateway queue`` commands.

With worker processes (:mod:`gateway.workers`) each worker writes its values
to files under ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess
mode, chosen by that variable when prometheus_client is imported) and the
supervisor sums them: counters and histograms add up; each gauge says how
(``multiprocess_mode``: the sum over live workers, or the most recent value).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

PREFIX = "gateway"
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

CONNECTIONS = Counter(
    f"{PREFIX}_smtp_connections_total",
    "SMTP connections accepted, by listener and TLS mode",
    ["listener", "tls"],
    registry=REGISTRY,
)
CONNECTIONS_REFUSED = Counter(
    f"{PREFIX}_smtp_connections_refused_total",
    "SMTP connections refused at connect (limits or connect policies)",
    ["listener"],
    registry=REGISTRY,
)
SESSIONS_OPEN = Gauge(
    f"{PREFIX}_smtp_sessions_open",
    "SMTP sessions open now, by listener",
    ["listener"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
MESSAGES_RECEIVED = Counter(
    f"{PREFIX}_messages_received_total",
    "Messages acknowledged with 250 (queued, held or discarded), by direction and result",
    ["listener", "direction", "result"],
    registry=REGISTRY,
)
MESSAGES_REJECTED = Counter(
    f"{PREFIX}_messages_rejected_total",
    "Commands refused by policy, by stage, reason and reply class (4xx, 5xx)",
    ["stage", "reason", "reply_class"],
    registry=REGISTRY,
)
AUTH_THROTTLED = Counter(
    f"{PREFIX}_smtp_auth_throttled_total",
    "AUTH commands refused 454 4.7.0 for too many failed logins, by what was over the limit (client, login)",
    ["scope"],
    registry=REGISTRY,
)
AUTH_ATTEMPTS = Counter(
    f"{PREFIX}_smtp_auth_attempts_total",
    "SMTP AUTH exchanges, by mechanism and result (ok, fail, tempfail, cancelled)",
    ["mechanism", "result"],
    registry=REGISTRY,
)
RECEIVED_BYTES = Counter(f"{PREFIX}_received_message_bytes_total", "Bytes of acknowledged messages", registry=REGISTRY)
RECIPIENTS = Counter(
    f"{PREFIX}_recipients_total",
    "Delivery outcomes per recipient and attempt: delivered, deferred, bounced; by next hop",
    ["status", "nexthop"],
    registry=REGISTRY,
)
DELIVERY_DURATION = Histogram(
    f"{PREFIX}_delivery_attempt_duration_seconds",
    "Duration of one delivery attempt to a next hop (all its hosts)",
    ["nexthop"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
BOUNCES = Counter(f"{PREFIX}_bounces_total", "Delivery status notifications generated", registry=REGISTRY)
SHARED_COUNTS_ERRORS = Counter(
    f"{PREFIX}_shared_counts_errors_total",
    "Rate-limit and failed-login checks let through because the shared counts ([cluster] redis_url) failed",
    registry=REGISTRY,
)
SCAN_DURATION = Histogram(
    f"{PREFIX}_scan_duration_seconds",
    "Duration of one content check at DATA",
    ["scanner"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
SCAN_VERDICTS = Counter(
    f"{PREFIX}_scan_verdicts_total",
    "Content check outcomes at DATA, by scanner and action",
    ["scanner", "action"],
    registry=REGISTRY,
)
SCANNER_UP = Gauge(
    f"{PREFIX}_scanner_up",
    "1 when the scanner's last call succeeded, 0 when it failed",
    ["scanner"],
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
DKIM_SIGNATURES = Counter(
    f"{PREFIX}_dkim_signatures_total",
    "DKIM signatures added, by domain and algorithm",
    ["domain", "algorithm"],
    registry=REGISTRY,
)
AUTH_RESULTS = Counter(
    f"{PREFIX}_inbound_auth_results_total",
    "Inbound SPF, DKIM and DMARC results (RFC 8601 result words)",
    ["method", "result"],
    registry=REGISTRY,
)
CERT_EXPIRY = Gauge(
    f"{PREFIX}_tls_certificate_expiry_timestamp_seconds",
    "Unix time when the server certificate expires",
    ["certificate"],
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
DATA_MEMORY = Gauge(
    f"{PREFIX}_smtp_data_memory_bytes",
    "Bytes of message text SMTP sessions hold in memory now (budget: smtpd_data_memory_limit)",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
SPOOL_COMMIT = Histogram(
    f"{PREFIX}_spool_commit_duration_seconds",
    "Time to commit a message durably",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)


def reply_class(code: int) -> str:
    """``"4xx"`` or ``"5xx"`` (bounded label)."""
    return f"{code // 100}xx"
