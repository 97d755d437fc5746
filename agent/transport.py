"""How the agent reaches the server: which URLs it opens, over what, and which redirects.

The agent runs as root and installs what the server names, checked against the sha256 the
server announces: whoever can rewrite the traffic can rewrite both. So the server is reached
over TLS, verified against the system's CAs or ``[server] ca_file``; plain http only to
loopback (a test server, an SSH tunnel) or when ``[server] allow_insecure_http = true`` says
so, and then the agent warns at every start. Only http and https URLs are ever opened: the
opener has no file, ftp or data handler, and every URL is checked before it is requested,
so nothing the server sends can make the agent read a local file.
"""

from __future__ import annotations

import ipaddress
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional, Union

from agent.errors import ConfigError

SCHEMES = ("http", "https")
# X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_NAME_MISMATCH = (62, 64)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``: traffic that never leaves the machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _insecure(parts: urllib.parse.SplitResult) -> bool:
    return parts.scheme == "http" and not is_loopback(parts.hostname or "")


def check_server_url(url: str, allow_insecure_http: bool = False) -> None:
    """Refuse a server URL that is not http(s), or plain http to a host that is not loopback
    unless the configuration allows it (ConfigError, saying what to do)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ConfigError(
            f"[server] url = {url!r} is not an http(s) URL: use https://HOST[:PORT], "
            "the address of the repository server"
        )
    if _insecure(parts) and not allow_insecure_http:
        raise ConfigError(
            f"[server] url = {url} is plain http to a host that is not loopback: anyone on "
            "the network path could read the node token and rewrite the steps and checksums "
            "this agent runs as root. Use https:// (and [server] ca_file = the CA's PEM file "
            "if a private CA signed the server's certificate; see docs/deployment.md), or, "
            "only on a network you trust, set [server] allow_insecure_http = true"
        )


def insecure_warning(url: str, allow_insecure_http: bool) -> Optional[str]:
    """What to log at start when the configuration allows plain http to another host."""
    if not (allow_insecure_http and _insecure(urllib.parse.urlsplit(url))):
        return None
    return (
        f"plain http to a host that is not loopback ({url}), allowed by [server] "
        "allow_insecure_http = true: anyone on the network path can read the node token and "
        "rewrite what this agent installs; serve the repository over https "
        "(docs/deployment.md) and remove that setting"
    )


def refusal(
    source: str, target: str, allow_insecure_http: bool, redirect: bool = False
) -> Optional[str]:
    """Why the agent must not request ``target``, named by ``source`` (the server's URL, or
    the URL that answered with a redirect), or None when it may."""
    new = urllib.parse.urlsplit(target)
    what = "a redirect to " if redirect else ""
    if new.scheme not in SCHEMES or not new.hostname:
        scheme = f"{new.scheme}:" if new.scheme else "scheme-less"
        return f"refusing {what}a {scheme} URL: only http and https are followed"
    if urllib.parse.urlsplit(source).scheme == "https" and new.scheme == "http":
        return f"refusing {what}{redact(target)}: never from https down to plain http"
    if _insecure(new) and not allow_insecure_http:
        return (
            f"refusing {what}{redact(target)}: plain http to a host that is not loopback; "
            "the server must name https URLs (or, only on a network you trust, set "
            "[server] allow_insecure_http = true)"
        )
    return None


def redact(url: str) -> str:
    """A URL for messages: the query of a presigned URL carries a signature."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects come back as HTTPError: the caller decides whether to follow one, and with
    which headers."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


CaFile = Union[str, Path, None]


def ssl_context(ca_file: CaFile = None) -> ssl.SSLContext:
    """Certificates and host names verified; against ``ca_file`` alone when given (it
    replaces the system's store, as curl's --cacert does), else the system's CAs."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"[server] ca_file = {ca_file}: cannot read it as certificates ({exc}); point it "
            "at the PEM file of the CA that signed the server's certificate"
        ) from None


def opener(ca_file: CaFile = None) -> urllib.request.OpenerDirector:
    """http and https only (proxies from the environment, as every urllib client), TLS
    verified, redirects left to the caller."""
    director = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(context=ssl_context(ca_file)),
        urllib.request.HTTPDefaultErrorHandler(),
        _NoRedirect(),
        urllib.request.HTTPErrorProcessor(),
    ):
        director.add_handler(handler)
    return director


def tls_failure(exc: BaseException, url: str, ca_file: CaFile) -> Optional[str]:
    """The message for a certificate the agent does not trust, or None for other errors.
    Not worth a retry: the same certificate comes back every time."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if not isinstance(reason, ssl.SSLCertVerificationError):
        return None
    host = urllib.parse.urlsplit(url).hostname
    why = reason.verify_message or str(reason)
    if reason.verify_code in _NAME_MISMATCH:
        return (
            f"{redact(url)}: the server's TLS certificate is not for {host} ({why}); put the "
            "name its certificate was issued for in [server] url, or give the server a "
            f"certificate for {host}"
        )
    trusted = f"the CA in [server] ca_file = {ca_file}" if ca_file else "the system's CAs"
    return (
        f"{redact(url)}: certificate verify failed ({why}), checked against {trusted}; if "
        "a private CA signed the server's certificate, set [server] ca_file to that CA's "
        "PEM file"
    )
