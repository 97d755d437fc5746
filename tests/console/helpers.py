"""A browser's view of the console over plain HTTP: log in with a token, keep the cookie,
read each page's CSRF token the way a form carries it."""

from __future__ import annotations

import re
from typing import Any, Optional

import requests

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
ALERT = re.compile(r'role="alert">([^<]*)<')


class Browser:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.csrf: Optional[str] = None

    def login(self, token: str) -> requests.Response:
        answer = self.http.post(
            f"{self.url}/ui/login", data={"token": token}, allow_redirects=False, timeout=30
        )
        if answer.status_code == 303:
            # Every logged-in page carries it (the log-out form); the catalog is every role's.
            self.csrf = csrf_of(self.get("/ui/catalog").text)
        return answer

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.http.get(f"{self.url}{path}", **kwargs)

    def post(
        self, path: str, data: Optional[dict[str, str]] = None, csrf: bool = True, **kwargs: Any
    ) -> requests.Response:
        form = dict(data or {})
        if csrf and self.csrf:
            form["csrf_token"] = self.csrf
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("allow_redirects", False)
        return self.http.post(f"{self.url}{path}", data=form, **kwargs)


def csrf_of(page: str) -> str:
    found = CSRF.search(page)
    assert found, "the page carries no CSRF token"
    return found.group(1)


def alert(page: str) -> str:
    found = ALERT.search(page)
    return found.group(1) if found else ""


def logged_in(url: str, token: str) -> Browser:
    browser = Browser(url)
    answer = browser.login(token)
    assert answer.status_code == 303, answer.text
    return browser
