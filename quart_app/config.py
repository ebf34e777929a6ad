"""Configuration defaults, environment overrides (``QUART_*``) and validation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote


class Defaults:
    # Secrets: never committed.  Without SECRET_KEY one is generated into the
    # instance folder on first start (see ``quart_app.secrets``).
    SECRET_KEY: str | None = None
    PUBLISH_TOKEN: str | None = None
    # Bearer token for the operator's views (every session's job history);
    # unset: nobody gets them.  At least 16 characters.
    OPERATOR_TOKEN: str | None = None
    # Private and presence channels (SPEC §10): the key that verifies their
    # tokens (a secret of 32 characters or more for HS*, or a PEM public key),
    # the algorithms accepted, and the audience and issuer checked when set.
    JWT_KEY: str | None = None
    JWT_ALGORITHMS = "HS256"
    JWT_AUDIENCE: str | None = None
    JWT_ISSUER: str | None = None
    JWT_LEEWAY_S = 5.0

    BROKER_URL = "memory://"
    # History (finished jobs, chat).  Unset: SQLite file ``history.sqlite3`` in
    # the instance folder; ``postgresql+asyncpg://user:pass@host/db`` for PostgreSQL.
    DATABASE_URL: str | None = None
    # Records waiting for the database writer.  When full, new records are
    # dropped (counted in stats and /metrics): a stream or a request never
    # waits for the database.
    DB_QUEUE_SIZE = 10_000
    # Most records the writer puts in one transaction.
    DB_BATCH = 500
    # Finished jobs and chat messages older than this are deleted by the
    # history writer (0: keep them forever), at most once per interval.
    HISTORY_RETENTION_DAYS = 30
    HISTORY_PRUNE_INTERVAL_S = 300.0

    # Sessions (SPEC §7).  Set SESSION_COOKIE_SECURE behind HTTPS.
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = False

    # SSE framing and stream lifetime (SPEC §3).
    SSE_RETRY_MS = 3000
    SSE_HEARTBEAT_S = 15.0
    SSE_MAX_AGE_S = 600.0
    # How far (in events) a live subscriber of a replayable topic may fall
    # behind before it is disconnected; it resumes with Last-Event-ID.
    SSE_QUEUE_SIZE = 1000
    # Largest chunk one write may carry when a subscriber catches up.
    SSE_MAX_CHUNK_BYTES = 256 * 1024
    # Caps on open streams, per process (503) and per client address (429;
    # 0 = off).  Behind a proxy every client has the proxy's address unless
    # PROXY_TRUSTED_HOPS says how many proxies to believe: set it before a
    # per-address cap.
    MAX_STREAMS = 50_000
    MAX_STREAMS_PER_CLIENT = 0
    # Jitter added to the last `retry:` sent on shutdown, so that clients do
    # not all reconnect in the same instant.
    SSE_DRAIN_JITTER_MS = 5000

    # The trackable generator (SPEC §4).
    MAX_AMOUNT = 100_000
    MAX_LENGTH = 1024
    MAX_DELAY_MS = 10_000
    JOB_ORPHAN_S = 30.0
    JOB_TTL_S = 300.0
    MAX_JOBS_PER_SESSION = 4
    MAX_JOBS = 64
    # Both limits are counted by the broker (on Redis: across workers and hosts);
    # a running job's place lapses this long after its process stopped renewing it.
    JOB_LIMIT_LEASE_S = 10.0
    # Strings generated between two yields to the event loop (delay_ms=0).
    JOB_BATCH = 256
    # When a job's result file reaches the disk (fsync) on the memory broker,
    # where it is the journal a restarted server resumes from: "batch", before each
    # batch is published, so what a watcher saw survives a power cut; "end", only
    # when the job pauses or ends (docs/RELIABILITY.md has what each keeps).
    JOB_FSYNC = "batch"
    # Newest events of each job kept in memory; older ones are replayed from storage.
    JOB_WINDOW = 256

    # Server push (SPEC §5).
    TICKER_INTERVAL_S = 1.0
    TICKER_HISTORY = 10
    # Numbers kept for slow ticker subscribers; past it they lose the oldest.
    TICKER_BUFFER = 100
    CLOCK_INTERVAL_S = 1.0
    CHANNEL_HISTORY = 1000
    # A channel (its history, its ids and its slot under MAX_CHANNELS) is
    # forgotten this long after its last publish.
    CHANNEL_TTL_S = 86_400.0
    # Distinct channel names (each keeps a history); past it a new name is a 503.
    MAX_CHANNELS = 10_000
    MAX_MESSAGE_BYTES = 65536
    MAX_CHAT_CHARS = 2000
    # A publish with an idempotency key is answered again, not published again, when
    # the same key comes back within this many seconds (SPEC §11).
    PUBLISH_IDEMPOTENCY_S = 300.0
    CORS_ORIGINS = ""

    # Statistics: each process publishes its gauges this often; the stats
    # stream sends one event per interval.
    STATS_INTERVAL_S = 1.0
    # /healthz's delivery probe: a canary every HEALTH_PROBE_S through the broker
    # and back; 503 once one has not come back for HEALTH_STALE_S.
    HEALTH_PROBE_S = 2.0
    HEALTH_STALE_S = 10.0
    # Stats events a new dashboard gets first (at one per interval).
    STATS_HISTORY = 120

    # Logs: "text" or "json" (one object per line).  ACCESS_LOG adds one
    # structured line per request from the app (Hypercorn's own access log is
    # configured in hypercorn.toml).  Secrets never reach either.
    LOG_FORMAT = "text"
    ACCESS_LOG = False

    # The edge (quart_app.edge).  Proxies in front whose forwarded headers are
    # believed, counted from the server: 0 believes none (the client address
    # is the TCP peer).  PROXY_MODE "legacy" reads X-Forwarded-For/-Proto,
    # "modern" reads Forwarded.
    PROXY_TRUSTED_HOPS = 0
    PROXY_MODE = "legacy"
    # Requests in progress (streams included) per client address; 0 = off.
    MAX_CONNECTIONS_PER_CLIENT = 0
    # "Too many open files" is logged at most once per interval.
    EMFILE_LOG_INTERVAL_S = 10.0

    # Request bodies larger than this are refused with 413.
    MAX_CONTENT_LENGTH = 1024 * 1024

    # Tune the garbage collector for many long-lived streams (see collector.tune_gc).
    GC_TUNE = True
    # With GC_TUNE, a full collection runs this often (frees connection cycles).
    GC_FULL_INTERVAL_S = 60.0

    # Instance folder (secret key, job results, database); default: Quart's.
    INSTANCE_PATH: str | None = None


# Shortest bearer token accepted at start-up (PUBLISH_TOKEN, OPERATOR_TOKEN).
MIN_TOKEN_CHARS = 16


def default_config() -> dict[str, Any]:
    return {key: getattr(Defaults, key) for key in dir(Defaults) if key.isupper()}


_POSITIVE_INT = (
    "SSE_RETRY_MS",
    "MAX_STREAMS",
    "SSE_QUEUE_SIZE",
    "SSE_MAX_CHUNK_BYTES",
    "MAX_AMOUNT",
    "MAX_LENGTH",
    "MAX_JOBS_PER_SESSION",
    "MAX_JOBS",
    "JOB_BATCH",
    "JOB_WINDOW",
    "TICKER_HISTORY",
    "TICKER_BUFFER",
    "CHANNEL_HISTORY",
    "MAX_CHANNELS",
    "MAX_MESSAGE_BYTES",
    "MAX_CHAT_CHARS",
    "MAX_CONTENT_LENGTH",
    "DB_QUEUE_SIZE",
    "DB_BATCH",
    "STATS_HISTORY",
)
_NON_NEGATIVE_INT = (
    "MAX_DELAY_MS",
    "SSE_DRAIN_JITTER_MS",
    "HISTORY_RETENTION_DAYS",
    "MAX_STREAMS_PER_CLIENT",
    "MAX_CONNECTIONS_PER_CLIENT",
    "PROXY_TRUSTED_HOPS",
)
_POSITIVE_FLOAT = (
    "SSE_HEARTBEAT_S",
    "SSE_MAX_AGE_S",
    "JOB_ORPHAN_S",
    "JOB_TTL_S",
    "JOB_LIMIT_LEASE_S",
    "CHANNEL_TTL_S",
    "PUBLISH_IDEMPOTENCY_S",
    "GC_FULL_INTERVAL_S",
    "TICKER_INTERVAL_S",
    "CLOCK_INTERVAL_S",
    "STATS_INTERVAL_S",
    "HEALTH_PROBE_S",
    "HEALTH_STALE_S",
    "EMFILE_LOG_INTERVAL_S",
    "HISTORY_PRUNE_INTERVAL_S",
)


_BOOL = ("SESSION_COOKIE_SECURE", "GC_TUNE", "ACCESS_LOG")

# The boolean words, in one place.  Session values take the SPEC's words
# (0/1, true/false); settings also take what environment variables use.
BOOL_WORDS: dict[str, bool] = {"1": True, "true": True, "0": False, "false": False}
SETTING_BOOL_WORDS: dict[str, bool] = {
    **BOOL_WORDS,
    "yes": True,
    "on": True,
    "no": False,
    "off": False,
    "": False,
}


class ConfigError(ValueError):
    """A setting that cannot be used: which one (``setting``), and what is wrong with it."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting} {problem}")
        self.setting = setting
        self.problem = problem

    def line(self, prog: str = "quart_app") -> str:
        """The one line a person reads: which environment variable, what is wrong."""
        return f"{prog}: bad setting QUART_{self.setting}: {self.problem}"


def parse_bool(value: Any, words: Mapping[str, bool] = BOOL_WORDS) -> bool:
    """``value`` as a boolean (bools, 0/1 and ``words``); ValueError otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = words.get(value.strip().lower())
        if word is not None:
            return word
    raise ValueError(f"not a boolean: {value!r}")


def _flag(key: str, value: Any) -> bool:
    try:
        return parse_bool(value, SETTING_BOOL_WORDS)
    except ValueError:
        raise ConfigError(key, f"must be true or false, got {value!r}") from None


# BROKER_URL: the schemes ``brokers.create_broker`` knows.
BROKER_SCHEMES = (
    "memory",
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_URL_FORM = "redis+sentinel://[:password@]host:port[,host:port...]/<service>[/<db>]"
SENTINEL_PORT = 26379
# Query options of a sentinel URL: how to authenticate to the sentinels themselves
# (the URL's own user and password are for the Redis servers).
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


class SentinelURL(NamedTuple):
    """What a ``redis+sentinel://`` URL says: the sentinels, the service they
    monitor, and how to talk to its primary (database, credentials, TLS)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def _address(item: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare host (the sentinels' port, 26379)."""
    item = item.strip()
    if item.startswith("["):
        host, bracket, port = item[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"sentinel address {item!r} is not host:port")
        port = port[1:]
    elif item.count(":") == 1:
        host, _, port = item.partition(":")
    elif ":" in item:
        raise ValueError(f"sentinel address {item!r} is not host:port ([...] around IPv6)")
    else:
        host, port = item, ""
    if not host:
        raise ValueError(f"sentinel address {item!r} has no host")
    if not port:
        return host, SENTINEL_PORT
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"sentinel address {item!r} has no valid port (1-65535)")
    return host, int(port)


def parse_sentinel_url(url: str) -> SentinelURL:
    """A ``redis+sentinel://`` (``rediss+sentinel://``: TLS) URL, checked.

    ``ValueError`` says what is wrong without repeating the URL (it may hold a
    password).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError("is not a redis+sentinel:// URL")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    auth, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = auth.partition(":")
        username = unquote(user) or None if colon else None
        password = unquote(secret) if colon else unquote(user)
    if not hosts.strip():
        raise ValueError("names no sentinel (host:port) before the service")
    sentinels = tuple(_address(item) for item in hosts.split(","))
    parts = path.split("/") if slash else []
    if not parts or not parts[0]:
        raise ValueError("names no service (the name the sentinels monitor, after the hosts)")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1]):
        raise ValueError("has more than /<service>/<db> after the hosts")
    db = 0
    if len(parts) == 2:
        if not (parts[1].isascii() and parts[1].isdigit()):
            raise ValueError(f"has a database that is not a number: {parts[1]!r}")
        db = int(parts[1])
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _SENTINEL_OPTIONS:
            raise ValueError(
                f"has an unknown option {name!r} (known: {', '.join(_SENTINEL_OPTIONS)})"
            )
        options[name] = value
    return SentinelURL(
        sentinels=sentinels,
        service=unquote(parts[0]),
        db=db,
        username=username,
        password=password,
        tls=scheme.lower().startswith("rediss"),
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


def check_broker_url(url: Any) -> str:
    """``BROKER_URL`` if a broker can be made from it; ``ConfigError`` saying why not."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError("BROKER_URL", "must be a URL such as memory:// or redis://host:6379/0")
    scheme = url.partition("://")[0].lower()
    if scheme not in BROKER_SCHEMES:
        raise ConfigError(
            "BROKER_URL",
            f"has an unsupported scheme {scheme!r}: use memory://, redis://, rediss://, "
            "unix://, redis+cluster://host:port[,host:port...] or "
            "redis+sentinel://host:port[,host:port...]/<service>",
        )
    if scheme in SENTINEL_SCHEMES:
        try:
            parse_sentinel_url(url)
        except ValueError as error:
            raise ConfigError("BROKER_URL", f"{error}; expected {SENTINEL_URL_FORM}") from None
    return url


def check_environment(root: str = ".") -> dict[str, Any]:
    """The configuration as ``create_app`` reads it from the environment, checked.

    What ``python -m quart_app`` runs before any worker starts, so that a bad
    setting is one line and a non-zero status, not a traceback per worker.
    """
    from quart import Config

    config = Config(root)
    config.update(default_config())
    config.from_prefixed_env()
    config.update(validate(config))
    from .tokens import verifier_of  # the JWT settings: their key is read and checked

    verifier_of(config)
    return dict(config)


def validate(config: Mapping[str, Any]) -> dict[str, Any]:
    """Coerce and check limits; raise ConfigError naming the bad setting."""
    checked: dict[str, Any] = {key: _flag(key, config[key]) for key in _BOOL if key in config}
    for key in _POSITIVE_INT + _NON_NEGATIVE_INT:
        value = config[key]
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"must be an integer, got {value!r}") from None
        minimum = 1 if key in _POSITIVE_INT else 0
        if number < minimum or isinstance(value, bool):
            raise ConfigError(key, f"must be an integer >= {minimum}, got {value!r}")
        checked[key] = number
    for key in _POSITIVE_FLOAT:
        value = config[key]
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"must be a number, got {value!r}") from None
        if not seconds > 0 or isinstance(value, bool):
            raise ConfigError(key, f"must be a number > 0, got {value!r}")
        checked[key] = seconds
    if checked["TICKER_BUFFER"] < checked["TICKER_HISTORY"]:
        raise ConfigError("TICKER_BUFFER", "must be >= TICKER_HISTORY")
    origins = config["CORS_ORIGINS"]
    if isinstance(origins, str):
        origins = [o.strip() for o in origins.split(",") if o.strip()]
    checked["CORS_ORIGINS"] = tuple(origins)
    check_broker_url(config["BROKER_URL"])
    database_url = config["DATABASE_URL"]
    if database_url is not None and (
        not isinstance(database_url, str) or "://" not in database_url
    ):
        raise ConfigError(
            "DATABASE_URL",
            "must be a URL such as sqlite+aiosqlite:///path/history.sqlite3 "
            "or postgresql+asyncpg://user:password@host/db",
        )
    mode = str(config["PROXY_MODE"]).strip().lower()
    if mode not in ("legacy", "modern"):
        raise ConfigError("PROXY_MODE", f"must be legacy or modern, got {config['PROXY_MODE']!r}")
    checked["PROXY_MODE"] = mode
    if config["JOB_FSYNC"] not in ("batch", "end"):
        raise ConfigError("JOB_FSYNC", f"must be batch or end, got {config['JOB_FSYNC']!r}")
    if config["LOG_FORMAT"] not in ("text", "json"):
        raise ConfigError("LOG_FORMAT", f"must be text or json, got {config['LOG_FORMAT']!r}")
    # Secrets: a short one is guessable (a session cookie can be forged offline):
    # refuse to start rather than serve with it.
    for key in ("SECRET_KEY", "PUBLISH_TOKEN", "OPERATOR_TOKEN"):
        token = config[key]
        if (
            token is not None
            and token != ""
            and (not isinstance(token, str | bytes) or len(token) < MIN_TOKEN_CHARS)
        ):
            raise ConfigError(
                key,
                f"must be a string of at least {MIN_TOKEN_CHARS} characters; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            )
        checked[key] = token or None
    return checked
