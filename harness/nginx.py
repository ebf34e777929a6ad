"""Debian's nginx in front of a server process, configured as the README documents it.

The site configuration is the repository's own ``docs/nginx.conf`` (the file
the README shows): rendering it changes only where it listens, the upstream it
proxies to, and the certificate, so what the tests run through is what an
operator copies.  The rest (temporary files, logs, pid file) lives in the
launcher's own directory, so nginx needs no root and touches nothing of the
system's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import IO

from .polling import wait_until
from .processes import HOST, children, cmdline, free_port, kill_left, owns_listener, tail, terminate
from .server import ROOT, ServerProcess

DOCUMENTED_CONFIG = ROOT / "docs" / "nginx.conf"
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

# What rendering replaces in the documented configuration, each exactly once.
_UPSTREAM_BLOCK = re.compile(r"^upstream\s+\w+\s*\{.*?^\}", re.MULTILINE | re.DOTALL)
_UPSTREAM_SERVER = re.compile(r"^([ \t]*)server\s+[^\s;{]+([^;{]*);", re.MULTILINE)
_LISTEN = re.compile(r"^([ \t]*)listen\s+443\s+ssl\b([^;]*);", re.MULTILINE)
_CERTIFICATE = re.compile(r"^([ \t]*)ssl_certificate\s+[^;]+;", re.MULTILINE)
_CERTIFICATE_KEY = re.compile(r"^([ \t]*)ssl_certificate_key\s+[^;]+;", re.MULTILINE)
_CERTIFICATE_LINES = re.compile(r"^[ \t]*ssl_certificate(?:_key)?\s+[^;]+;[^\n]*\n", re.MULTILINE)


def nginx_binary() -> str:
    path = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise RuntimeError(
            "nginx is not installed, and the proxy tests need a real one: "
            "install it (Debian/Ubuntu: apt-get install nginx; macOS: brew install nginx)"
        )
    return path


def _replace_once(pattern: re.Pattern[str], replacement: str, text: str, what: str) -> str:
    rendered, count = pattern.subn(replacement, text)
    if count != 1:
        raise ValueError(f"{DOCUMENTED_CONFIG.name} should have exactly one {what}; found {count}")
    return rendered


def render_site(
    text: str,
    *,
    upstream: str,
    listen: str,
    certificate: tuple[Path, Path] | None,
) -> str:
    """The documented site configuration ``text`` with its one upstream ``server``
    line pointed at ``upstream`` (``host:port``), listening on ``listen``
    (``host:port``), with ``certificate`` (chain, key); without one, it listens
    on plain HTTP (no ``ssl``, no ``http2``, no certificate lines)."""
    block = _UPSTREAM_BLOCK.search(text)
    if block is None:
        raise ValueError(f"{DOCUMENTED_CONFIG.name} has no upstream block")
    servers = _replace_once(
        _UPSTREAM_SERVER, rf"\g<1>server {upstream}\g<2>;", block.group(), "upstream server"
    )
    text = text[: block.start()] + servers + text[block.end() :]
    if certificate is None:
        text = _replace_once(_LISTEN, rf"\g<1>listen {listen};", text, "`listen 443 ssl`")
        text, count = _CERTIFICATE_LINES.subn("", text)
        if count != 2:
            raise ValueError(f"{DOCUMENTED_CONFIG.name} should have one certificate and one key")
        return text
    chain, key = certificate
    text = _replace_once(_LISTEN, rf"\g<1>listen {listen} ssl\g<2>;", text, "`listen 443 ssl`")
    text = _replace_once(_CERTIFICATE, rf"\g<1>ssl_certificate {chain};", text, "ssl_certificate")
    return _replace_once(
        _CERTIFICATE_KEY, rf"\g<1>ssl_certificate_key {key};", text, "ssl_certificate_key"
    )


class NginxServer:
    """``nginx`` on a free loopback port in front of ``upstream`` (a
    :class:`ServerProcess` or ``host:port``), with the documented site
    configuration (``config``, default ``docs/nginx.conf``).

    ``certificate`` is a (chain, key) pair of PEM files: nginx then serves TLS
    with HTTP/2 by ALPN, as documented; without one, plain HTTP/1.1.  Everything
    nginx writes stays under ``directory``; run as root, its worker keeps root's
    identity (it would otherwise switch to ``nobody``, who cannot reach a test's
    private temporary directory).
    """

    def __init__(
        self,
        directory: Path,
        upstream: ServerProcess | str,
        *,
        certificate: tuple[Path, Path] | None = None,
        port: int | None = None,
        config: Path = DOCUMENTED_CONFIG,
    ) -> None:
        self.directory = directory
        self.upstream = upstream if isinstance(upstream, str) else f"{HOST}:{upstream.port}"
        self.certificate = certificate
        self.config = config
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.error_log = directory / "error.log"
        self.access_log = directory / "access.log"
        self.site_path = directory / "site.conf"
        self.conf_path = directory / "nginx.conf"
        self._output: IO[bytes] | None = None
        self._workers: dict[int, str] = {}

    @property
    def scheme(self) -> str:
        return "https" if self.certificate is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}"

    def render(self) -> str:
        """The site configuration as this nginx runs it."""
        return render_site(
            self.config.read_text(),
            upstream=self.upstream,
            listen=f"{HOST}:{self.port}",
            certificate=self.certificate,
        )

    def main_config(self) -> str:
        """nginx's main configuration: one worker, the files under ``directory``,
        and the site configuration included inside ``http {}``."""
        temp = "\n".join(
            f"    {name}_temp_path {self.directory / 'temp' / name};" for name in TEMP_DIRS
        )
        return (
            "worker_processes 1;\n"
            "events {\n    worker_connections 1024;\n}\n"
            "http {\n"
            f"    access_log {self.access_log};\n"
            f"{temp}\n"
            f"    include {self.site_path};\n"
            "}\n"
        )

    def argv(self) -> list[str]:
        directives = [
            "daemon off;",
            f"pid {self.directory / 'nginx.pid'};",
            f"error_log {self.error_log} warn;",
        ]
        if os.geteuid() == 0:
            directives.append("user root;")
        return [
            nginx_binary(),
            "-p",
            str(self.directory),
            "-c",
            str(self.conf_path),
            "-e",  # the log of start-up errors, before the configuration is read
            str(self.error_log),
            "-g",
            " ".join(directives),
        ]

    def start(self, timeout: float = 10.0, attempts: int = 3) -> NginxServer:
        """Start it and wait until ``/healthz`` answers 200 through it
        (``RuntimeError`` otherwise); a port taken meanwhile is replaced."""
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except RuntimeError as error:
                if "Address already in use" not in str(error) or attempt == attempts - 1:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> NginxServer:
        for name in TEMP_DIRS:
            (self.directory / "temp" / name).mkdir(parents=True, exist_ok=True)
        self.site_path.write_text(self.render())
        self.conf_path.write_text(self.main_config())
        self._output = open(self.directory / "nginx.out", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            self.argv(), cwd=self.directory, stdout=self._output, stderr=subprocess.STDOUT
        )
        try:
            wait_until(self._ready, timeout=timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"nginx did not answer /healthz in {timeout} s:\n{self.log()}"
            ) from None
        except BaseException:
            self.stop()
            raise
        self._workers = {
            pid: cmdline(pid) for pid in children(self.pid) if "worker" in cmdline(pid)
        }
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited early:\n{self.log()}")
        if not owns_listener(self.proc.pid, self.port):
            return False  # not listening yet, or someone else's port
        # Only whether it answers: the port is this nginx's own, on loopback.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(
                f"{self.url}/healthz", timeout=1.0, context=context
            ) as response:
                return bool(response.status == 200)
        except OSError:  # refused, reset, an upstream not up yet (502)
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self, chars: int = 4000) -> str:
        """The end of nginx's error log (and of anything it printed)."""
        printed = tail(self.directory / "nginx.out", chars)
        return tail(self.error_log, chars) + (f"\n{printed}" if printed else "")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (nginx's fast shutdown: open streams are cut), SIGKILL after
        ``grace`` seconds, and never leave a worker behind."""
        if self.proc is not None:
            terminate(self.proc, signal.SIGTERM, grace)
        kill_left(self._workers)
        if self._output is not None:
            with contextlib.suppress(OSError):
                self._output.close()
            self._output = None

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
