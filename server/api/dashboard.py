"""The dashboard: `GET /` and `GET /static/{name}`, public (SPEC §3, §10).

The page is plain files under `server/static/`, served from memory (re-read when a
file changes on disk, so editing them needs no restart). The dashboard never embeds
the API key: the browser sends it per request in the X-API-KEY header, so these
routes need no authentication.

Caching: `/` is always revalidated, and it links the assets as
`/static/app.js?v=<content hash>`, so an asset fetched under its current hash can be
cached for a year (`immutable`); any other asset URL is revalidated by ETag. A new
release therefore reaches browsers on the next page load, with no build step.

The script is a set of ES modules that import each other as `./dom.js`. So that a
changed module is fetched afresh too, the page carries an import map mapping every
module's URL (`/static/dom.js`) to its hashed one (`/static/dom.js?v=<hash>`): the
modules' own bytes stay as on disk, and a module whose bytes change gets a new URL
while the others keep theirs (and stay cached).

Security headers: a strict Content-Security-Policy (only same-origin scripts, styles
and connections, no inline code except the import map, allowed by its sha256 hash, no
framing, Trusted Types enforced because the page never writes HTML strings) plus the
usual nosniff / no-referrer companions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from server.http.errors import not_found

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
INDEX_FILE = "index.html"

_CONTENT_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}
# Flat directory, lower-case names only: nothing can climb out of STATIC_DIR.
_ASSET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\.(?:css|js|svg)")
# `/static/app.js` or `/static/style.css` written as an attribute value in index.html.
_ASSET_REFERENCE = re.compile(r'(?P<attr>(?:src|href)=")/static/(?P<name>[a-z0-9_-]+\.(?:css|js))"')

# Where index.html holds the import map; filled when the page is served.
_IMPORT_MAP_SLOT = '<script type="importmap"></script>'


def content_security_policy(script_hashes: tuple[str, ...] = ()) -> str:
    """The policy, allowing inline scripts only by the sha256 of their exact text."""
    allowed = " ".join(f"'sha256-{digest}'" for digest in script_hashes)
    return _POLICY_TEMPLATE.replace("script-src 'self'", f"script-src 'self' {allowed}".rstrip())


_POLICY_TEMPLATE = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # data: only for the empty favicon. The row-errors CSV is saved from a blob: URL
        # through <a download>; that is a download, which no fetch directive governs.
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
CONTENT_SECURITY_POLICY = content_security_policy()
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class _Asset:
    stamp: tuple[int, int]  # (mtime_ns, size) of the file this was read from
    body: bytes
    version: str  # content hash: the ?v= of the asset URL and the ETag
    content_type: str
    policy: str = CONTENT_SECURITY_POLICY  # the page's own, allowing its import map

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


_cache: dict[str, _Asset] = {}
# The served index: (its source version, the linked assets' and modules' versions) →
# rewritten page.
_index_cache: dict[tuple[str, tuple[str, ...], tuple[str, ...]], _Asset] = {}


def _load(name: str) -> _Asset | None:
    """The file as on disk, re-read only when its mtime or size changed."""
    path = STATIC_DIR / name
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _cache.get(name)
    if cached is not None and cached.stamp == stamp:
        return cached
    body = path.read_bytes()
    asset = _Asset(
        stamp=stamp,
        body=body,
        version=hashlib.sha256(body).hexdigest()[:20],
        content_type=_CONTENT_TYPES[path.suffix],
    )
    _cache[name] = asset
    return asset


def _modules() -> dict[str, _Asset]:
    """Every script module under STATIC_DIR (any of them may be imported), by name."""
    modules = {}
    for path in sorted(STATIC_DIR.glob("*.js")):
        asset = _load(path.name) if _ASSET_NAME.fullmatch(path.name) else None
        if asset is not None:
            modules[path.name] = asset
    return modules


def import_map(modules: dict[str, _Asset]) -> str:
    """The import map's text: each module's URL → its content-hashed URL."""
    imports = {f"/static/{name}": f"/static/{name}?v={a.version}" for name, a in modules.items()}
    return json.dumps({"imports": imports}, indent=2)


def _index() -> _Asset | None:
    """index.html with every `/static/<asset>` link pinned to the asset's current hash,
    and the import map that pins every module imported from another."""
    source = _load(INDEX_FILE)
    if source is None:
        return None
    text = source.body.decode("utf-8")
    linked = {m["name"]: _load(m["name"]) for m in _ASSET_REFERENCE.finditer(text)}
    modules = _modules()
    key = (
        source.version,
        tuple(a.version if a else "" for a in linked.values()),
        tuple(f"{name}={a.version}" for name, a in modules.items()),
    )
    cached = _index_cache.get(key)
    if cached is not None:
        return cached

    def pinned(match: re.Match[str]) -> str:
        asset = linked[match["name"]]
        suffix = f"?v={asset.version}" if asset is not None else ""
        return f'{match["attr"]}/static/{match["name"]}{suffix}"'

    text = _ASSET_REFERENCE.sub(pinned, text)
    mapping = import_map(modules)
    digest = base64.b64encode(hashlib.sha256(mapping.encode("utf-8")).digest()).decode()
    text = text.replace(_IMPORT_MAP_SLOT, f'<script type="importmap">{mapping}</script>')
    body = text.encode("utf-8")
    page = _Asset(
        source.stamp,
        body,
        hashlib.sha256(body).hexdigest()[:20],
        source.content_type,
        policy=content_security_policy((digest,)),
    )
    _index_cache.clear()  # only the current version is ever served
    _index_cache[key] = page
    return page


def _respond(request: web.Request, asset: _Asset, cache_control: str) -> web.Response:
    headers = {
        **SECURITY_HEADERS,
        "Content-Security-Policy": asset.policy,
        "Cache-Control": cache_control,
        "ETag": asset.etag,
    }
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


async def index(request: web.Request) -> web.Response:
    page = _index()
    if page is None:
        raise not_found("the dashboard (server/static/index.html)")
    return _respond(request, page, REVALIDATE)


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    asset = _load(name) if _ASSET_NAME.fullmatch(name) else None
    if asset is None:
        raise not_found(f"static file {name!r}")
    pinned = request.query.get("v") == asset.version
    return _respond(request, asset, IMMUTABLE if pinned else REVALIDATE)
