"""A browser in miniature for the console's HTTP tests: ``http.client``, cookies kept by
name, no redirect followed, the raw ``Set-Cookie`` headers and the page's CSRF token exposed."""

from __future__ import annotations

import http.client
import re
import ssl
import urllib.parse
from dataclasses import dataclass, field

_CSRF = re.compile(r'name="csrf_token" value="(?P<token>[^"]+)"')


@dataclass
class HttpAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def set_cookies(self) -> list[str]:
        return [value for key, value in self.headers if key.lower() == "set-cookie"]

    def csrf_token(self) -> str:
        match = _CSRF.search(self.text)
        if match is None:
            raise AssertionError("no csrf_token field on the page")
        return match["token"]


@dataclass
class HttpSession:
    """A browser in miniature: keeps cookies by name, follows no redirects."""

    base_url: str
    cookies: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0
    tls: ssl.SSLContext | None = None  # for an https:// base URL

    def get(self, path: str, params: dict[str, str] | None = None) -> HttpAnswer:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return self._request("GET", path + query, None, {})

    def post(self, path: str, form: dict[str, str]) -> HttpAnswer:
        body = urllib.parse.urlencode(form).encode()
        headers = {"content-type": "application/x-www-form-urlencoded"}
        return self._request("POST", path, body, headers)

    def post_file(
        self, path: str, form: dict[str, str], field_name: str, filename: str, content: bytes
    ) -> HttpAnswer:
        """A multipart/form-data POST with one file, as a browser's upload form sends it."""
        boundary = "----console-test-boundary-7d1f"
        parts = []
        for name, value in form.items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n".encode()
            )
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; '
            f'filename="{filename}"\r\nContent-Type: text/csv\r\n\r\n'.encode()
            + content
            + b"\r\n"
        )
        parts.append(f"--{boundary}--\r\n".encode())
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        return self._request("POST", path, b"".join(parts), headers)

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> HttpAnswer:
        parts = urllib.parse.urlsplit(self.base_url)
        connection = (
            http.client.HTTPSConnection(parts.netloc, timeout=self.timeout, context=self.tls)
            if parts.scheme == "https"
            else http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
        )
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            answer = HttpAnswer(response.status, response.getheaders(), response.read())
        finally:
            connection.close()
        for cookie in answer.set_cookies():
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0].strip('"')
            if "max-age=0" in cookie.lower() or not value:
                self.cookies.pop(name.strip(), None)
            else:
                self.cookies[name.strip()] = value
        return answer
