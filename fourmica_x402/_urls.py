"""URLs as the library takes them: an http(s) URL a request can be sent to, and a URL as
people and logs may see it (its password masked)."""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

__all__ = ["PASSWORD_PARAM", "SECRET_PARAM", "check_http_url", "check_public_url", "safe_url"]

#: libpq's password parameter: in a URL's query (``?password=…``) or a conninfo string.
PASSWORD_PARAM = re.compile(r"(?i)((?:^|[?&\s])password\s*=\s*)('[^']*'|[^&#\s]*)")

#: A credential an API takes in a URL's query (``?api_key=…``, ``&access_token=…``): its
#: value is masked wherever a URL is shown or kept (receipts, logs, errors).
SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:api[_-]?key|x-api-key|key|access[_-]?token|auth[_-]?token|id[_-]?token|"
    r"refresh[_-]?token|token|client[_-]?secret|secret|sig|signature|auth|passwd|pwd|"
    r"session(?:[_-]?id)?|private[_-]?token|x-(?:amz|goog)-(?:signature|credential|security-token))"
    r"=)([^&#;]*)"
)

#: A URL's host and port with no userinfo: ``name``, ``[v6]``, either with ``:digits``.
_HOST_PORT = re.compile(r"(?:\[[^\]]*\]|[^:@\[\]]*)(?::\d*)?")


def safe_url(url: str) -> str:
    """``url`` with its password (``user:secret@``, ``?password=…``) and the credentials of
    its query (:data:`SECRET_PARAM`: ``?api_key=…``, ``&token=…``) replaced by ``***``; an
    http(s) URL's userinfo without a password is a token (``https://TOKEN@hooks…``): all of
    it is replaced. A database URL's user stays (``postgresql://app@db``)."""
    url = SECRET_PARAM.sub(r"\1***", PASSWORD_PARAM.sub(r"\1***", url))
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # An http(s) URL's authority ends at its path, query or fragment (an ``@`` in the query of
    # ``https://host?to=a@b`` is no userinfo: the host stays); libpq's at the first ``/``, as
    # does a malformed one's (``user:pa#ss@host``: its password stays masked).
    web = scheme.lower() in ("http", "https")
    cut = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    if not web or ("@" not in rest[:cut] and not _HOST_PORT.fullmatch(rest[:cut])):
        cut = rest.find("/") if "/" in rest else len(rest)
    authority, path = rest[:cut], rest[cut:]
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return url
    if ":" not in userinfo:
        if not web:
            return url
        return f"{scheme}://***@{host}{path}"
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{path}"


def check_http_url(url: str) -> SplitResult:
    """``url`` split, when a request can go to it: http(s), a host httpx takes (an IPv4
    address in range, a name that IDNA encodes) and a port up to 65535 (httpx would wrap a
    larger one onto another port, another service). ``ValueError`` saying what is wrong
    otherwise, the URL cut to 80 characters (its password masked)."""
    import httpx

    try:
        parts = urlsplit(url)
        named = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # an unclosed IPv6 bracket
        named = False
    if not named:
        raise ValueError(f"{safe_url(url)!r:.80} is not an http(s):// URL")
    try:
        parts.port  # noqa: B018  (raises for a port out of range)
    except ValueError:
        raise ValueError(f"{safe_url(url)!r:.80}: the port is not a number 0..65535") from None
    try:
        # As a request will: httpx checks the address and decodes the name for the Host
        # header, the socket encodes it (IDNA, each label 1..63 characters).
        httpx.Request("GET", url).url.raw_host.decode("ascii").encode("idna")
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise ValueError(f"{safe_url(url)!r:.80}: not a valid host ({exc})") from None
    return parts


def check_public_url(url: str) -> None:
    """A service's public URL is handed to every caller (``/core/public-params``) with paths
    appended (docs/operations.md, "Keys"): ``ValueError`` for one with credentials, which
    would be published, or a query or fragment, which would end up before the path."""
    if "@" in urlsplit(url).netloc:
        carried = "credentials"
    elif "?" in url or "#" in url:
        carried = "a query" if "?" in url.split("#")[0] else "a fragment"
    else:
        return
    raise ValueError(f"{safe_url(url)!r:.80} carries {carried} (every caller is handed it)")
