"""The dashboard's ES modules (issue 11.6): every import is content-hashed.

index.html carries an import map from each module's URL to its hashed URL; the map is
an inline script, allowed by its sha256 in the page's Content-Security-Policy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from server.api import dashboard
from server.api.dashboard import IMMUTABLE, REVALIDATE, STATIC_DIR
from tests.conftest import Api

IMPORT_MAP = re.compile(r'<script type="importmap">(?P<text>.*?)</script>', re.DOTALL)
# `import { a } from "./dom.js";`, `import "./x.js";`, and `import("./types.js")` in JSDoc.
IMPORT = re.compile(r'(?:^import\s[^"]*?|^import\s*)"\./(?P<name>[a-z0-9_-]+\.js)"', re.MULTILINE)
TYPE_IMPORT = re.compile(r'import\("\./(?P<name>[a-z0-9_-]+\.js)"\)')
OPENAPI = Path(__file__).resolve().parent.parent / "server" / "openapi.json"


async def _page(api: Api) -> tuple[dict[str, str], str, str]:
    """(the import map's imports, the inline map's text, the page's policy)."""
    async with api.client.get("/") as resp:
        assert resp.status == 200
        html = await resp.text()
        policy = resp.headers["Content-Security-Policy"]
    (match,) = IMPORT_MAP.finditer(html)
    imports = json.loads(match["text"])["imports"]
    return imports, match["text"], policy


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _version(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:20]


def test_every_module_is_type_checked() -> None:
    for path in STATIC_DIR.glob("*.js"):
        assert path.read_text(encoding="utf-8").startswith("// @ts-check\n"), path.name


async def test_every_imported_module_is_served_under_its_hash_for_good(api: Api) -> None:
    imports, text, policy = await _page(api)
    imported = {
        m["name"] for path in STATIC_DIR.glob("*.js") for m in IMPORT.finditer(path.read_text())
    }
    assert {"dom.js", "api.js", "sse.js", "state.js", "list.js", "detail.js"} <= imported
    for name in imported | {"app.js"}:
        url = imports[f"/static/{name}"]
        assert url == f"/static/{name}?v={_version(STATIC_DIR / name)}"
        async with api.client.get(url) as resp:
            assert resp.status == 200, name
            assert resp.headers["Cache-Control"] == IMMUTABLE
            assert resp.content_type == "text/javascript"
            assert await resp.read() == (STATIC_DIR / name).read_bytes()
    # The inline import map is the one inline script, allowed by its exact hash only.
    assert f"script-src 'self' 'sha256-{_sha256(text)}';" in policy
    assert "unsafe-inline" not in policy
    # The assets keep the policy without any inline script allowed.
    async with api.client.get(imports["/static/dom.js"]) as resp:
        assert "script-src 'self';" in resp.headers["Content-Security-Policy"]


async def test_a_changed_module_gets_a_new_url(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    static = tmp_path / "static"
    shutil.copytree(STATIC_DIR, static)
    monkeypatch.setattr(dashboard, "STATIC_DIR", static)
    before, before_text, _ = await _page(api)

    changed = static / "dom.js"
    changed.write_bytes(changed.read_bytes() + b"// a new release\n")
    after, after_text, policy = await _page(api)

    assert after["/static/dom.js"] != before["/static/dom.js"]
    assert after["/static/dom.js"] == f"/static/dom.js?v={_version(changed)}"
    # Only the changed module's URL moved: the others stay cached in browsers.
    assert {k: v for k, v in after.items() if k != "/static/dom.js"} == {
        k: v for k, v in before.items() if k != "/static/dom.js"
    }
    assert f"'sha256-{_sha256(after_text)}'" in policy
    assert f"'sha256-{_sha256(before_text)}'" not in policy
    async with api.client.get(after["/static/dom.js"]) as resp:
        assert resp.headers["Cache-Control"] == IMMUTABLE
        assert await resp.read() == changed.read_bytes()
    # The old URL is not the current content: revalidated, never cached for good.
    async with api.client.get(before["/static/dom.js"]) as resp:
        assert resp.headers["Cache-Control"] == REVALIDATE


def test_the_payload_typedef_matches_the_openapi_document() -> None:
    """types.js's BulkRequest names exactly the properties server/openapi.json lists."""
    text = (STATIC_DIR / "types.js").read_text(encoding="utf-8")
    block = text.split("@typedef {object} BulkRequest", 1)[1].split("*/", 1)[0]
    typed = re.findall(r"@property \{.*\} (\w+)$", block, re.MULTILINE)
    schema = json.loads(OPENAPI.read_text(encoding="utf-8"))["components"]["schemas"]
    assert typed == list(schema["BulkRequest"]["properties"])
    # And the modules that use it import it from types.js, which exists.
    for path in STATIC_DIR.glob("*.js"):
        for m in TYPE_IMPORT.finditer(path.read_text(encoding="utf-8")):
            assert (STATIC_DIR / m["name"]).exists(), (path.name, m["name"])
