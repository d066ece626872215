"""Production TLS settings from the environment: `check --deploy` on the environment that
docs/operations.md documents, and real HTTP against a web server started with it."""

from __future__ import annotations

import http.client
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from http.cookies import SimpleCookie
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"


def _base_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: nothing of the test run's own (DATABASE_URL, EDM_*) leaks in."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "EDM_VAR_DIR": str(tmp_path / "var"),
    }


def documented_environment() -> dict[str, str]:
    """The block under "HTTPS and the client's address" in docs/operations.md, with its
    placeholders filled in."""
    text = OPERATIONS.read_text()
    block = re.search(r"```sh\n# /etc/skylark\.env\n(.*?)```", text, re.S)
    assert block, "docs/operations.md has lost its production environment block"
    env = {}
    for line in block.group(1).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, value = line.partition("=")
        env[name.strip()] = value.strip()
    env["SECRET_KEY"] = secrets.token_urlsafe(50)
    return {name: re.sub(r"<[^>]*>", "placeholder", value) for name, value in env.items()}


def _check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_the_documented_production_environment(tmp_path):
    documented = documented_environment()
    assert documented["EDM_HTTPS"] == "true"
    result = _check_deploy({**_base_env(tmp_path), **documented})
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_check_deploy_warns_with_the_default_environment(tmp_path):
    result = _check_deploy(_base_env(tmp_path))
    assert result.returncode != 0
    for warning in (
        "security.W004",  # HSTS
        "security.W008",  # https redirect
        "security.W012",  # session cookie
        "security.W016",  # CSRF cookie
        "skylark.W001",  # SECRET_KEY from a file of this machine's own
        "skylark.W002",  # http:// public URL
    ):
        assert warning in result.stderr


# --- a real web server -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def site_env(tmp_path_factory) -> dict[str, str]:
    """A migrated SQLite database with an admin, shared by the servers of this module."""
    tmp_path = tmp_path_factory.mktemp("https")
    env = {
        **_base_env(tmp_path),
        "EDM_SQLITE_PATH": str(tmp_path / "site.sqlite3"),
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SUPERUSER_USERNAME": "admin",
        "DJANGO_SUPERUSER_PASSWORD": "pw-for-the-test",
        "DJANGO_SUPERUSER_EMAIL": "admin@example.org",
    }
    for command in (["migrate", "-v0"], ["createsuperuser", "--noinput"]):
        subprocess.run(
            [sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, timeout=120
        )
    return env


@pytest.fixture
def web_server(site_env, tmp_path):
    """Start `manage.py runserver` with extra environment; yields its port."""
    processes = []

    def start(**extra: str) -> int:
        port = _free_port()
        log = (tmp_path / f"runserver-{port}.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=ROOT,
            env={**site_env, **extra},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / f"runserver-{port}.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return port
            except OSError:
                time.sleep(0.1)
        raise AssertionError("runserver did not start")

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def _request(port: int, method: str, path: str, headers=None, body: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def _cookies(response) -> SimpleCookie:
    cookies = SimpleCookie()
    for header in response.headers.get_all("Set-Cookie") or []:
        cookies.load(header)
    return cookies


HTTPS_ENV = {"EDM_HTTPS": "true", "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto:https"}
FROM_PROXY = {"X-Forwarded-Proto": "https"}


def test_http_is_redirected_to_https(web_server):
    port = web_server(**HTTPS_ENV)
    response = _request(port, "GET", "/admin/login/?next=/admin/")
    assert response.status == 301
    assert response.headers["Location"] == f"https://127.0.0.1:{port}/admin/login/?next=/admin/"
    # The proxy says the client came over http: redirected too.
    response = _request(port, "GET", "/admin/login/", {"X-Forwarded-Proto": "http"})
    assert response.status == 301


def test_behind_the_proxy_https_gets_hsts_and_secure_cookies(web_server):
    port = web_server(**HTTPS_ENV)
    page = _request(port, "GET", "/admin/login/", FROM_PROXY)
    assert page.status == 200
    assert page.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    csrf = _cookies(page)["csrftoken"]
    assert csrf["secure"] is True

    login = _request(
        port,
        "POST",
        "/admin/login/?next=/admin/",
        {
            **FROM_PROXY,
            "Cookie": f"csrftoken={csrf.value}",
            "Origin": f"https://127.0.0.1:{port}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        f"csrfmiddlewaretoken={csrf.value}&username=admin&password=pw-for-the-test&next=/admin/",
    )
    assert login.status == 302, login.headers
    session = _cookies(login)["sessionid"]
    assert session["secure"] is True and session["httponly"] is True


def test_an_individual_variable_overrides_the_https_set(web_server):
    port = web_server(**HTTPS_ENV, SECURE_HSTS_SECONDS="300", SECURE_SSL_REDIRECT="false")
    assert _request(port, "GET", "/admin/login/").status == 200
    page = _request(port, "GET", "/admin/login/", FROM_PROXY)
    assert page.headers["Strict-Transport-Security"] == "max-age=300; includeSubDomains"


def test_the_proxy_header_is_not_believed_unless_configured(web_server):
    port = web_server(EDM_HTTPS="true")
    response = _request(port, "GET", "/admin/login/", FROM_PROXY)
    assert response.status == 301  # a client saying "https" in a header is still on http


def test_the_embedded_default_serves_plain_http(web_server):
    port = web_server()
    page = _request(port, "GET", "/admin/login/", FROM_PROXY)
    assert page.status == 200
    assert "Strict-Transport-Security" not in page.headers
    assert not _cookies(page)["csrftoken"]["secure"]
