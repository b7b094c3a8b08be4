"""The Data Docs of a validate run open offline: no page, stylesheet or script names an outside
address, and every file a page loads is in the site. Real Great Expectations, real docs."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from medflow.config import ValidateParams
from medflow.errors import ValidationFailed
from medflow.validation.docs_site import LOCAL_COPIES, STATIC_DIR
from medflow.validation.stage import DOCS_DIR, run_validate
from tests.helpers.manifest_factory import CLASS_NAMES, valid_manifest, write_manifest

URL = re.compile(r"https?://[^\s\"'()<>`\\]+")
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)")
# Names, not requests: XML namespaces (SVG inside scripts and stylesheets' data: URIs).
NAMESPACES = {
    "http://www.w3.org/2000/svg",
    "http://www.w3.org/1999/xlink",
    "http://www.w3.org/2000/xmlns/",
}
# Text in the vendored third-party files that no browser fetches: license and project
# addresses in their header comments; vega-lite's $schema id of the Vega spec it compiles
# to and an issue link in a comment; vega-embed's "Open in Vega Editor" action (GX's graphs
# call vegaEmbed with actions: false) and a library credit.
VENDOR_TEXT = {
    "http://opensource.org/licenses/MIT",
    "http://www.apache.org/licenses/LICENSE-2.0",
    "http://wenzhixin.net.cn/",
    "https://bootstrap-table.com",
    "https://fontawesome.com",
    "https://fontawesome.com/license/free",
    "https://getbootstrap.com/",
    "https://github.com/twbs/bootstrap/blob/master/LICENSE",
    "https://github.com/twbs/bootstrap/graphs/contributors",
    "https://github.com/uxsolutions/bootstrap-datepicker",
    "https://popper.js.org/",
    "https://vega.github.io/schema/vega/v5.json",
    "https://github.com/vega/vega-lite/issues/2415",
    "https://vega.github.io/editor/",
    "https://github.com/Starcounter-Jack/JSON-Patch",
}


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Data Docs of a failing run: failure tables as well as passing rows."""
    tmp = tmp_path_factory.mktemp("docs")
    df = valid_manifest()
    df.loc[df["image_id"] == "2.25.0051", "pixel_std"] = 0.0
    ingest = write_manifest(df, tmp / "ingest")
    with pytest.raises(ValidationFailed):
        run_validate(ValidateParams(), CLASS_NAMES, ingest, tmp / "validate")
    return tmp / "validate" / DOCS_DIR


def _text_files(docs: Path) -> list[Path]:
    return sorted(p for p in docs.rglob("*") if p.suffix in {".html", ".css", ".js"})


def test_no_page_stylesheet_or_script_names_an_outside_address(docs: Path) -> None:
    pages = sorted(docs.rglob("*.html"))
    assert len(pages) >= 13  # the index, and a suite page and a result page per suite
    vendored = docs / "static" / "vendor"
    found = {}
    for path in _text_files(docs):
        allowed = NAMESPACES | (VENDOR_TEXT if path.is_relative_to(vendored) else set())
        outside = set(URL.findall(path.read_text(errors="replace"))) - allowed
        if outside:
            found[str(path.relative_to(docs))] = sorted(outside)
    assert found == {}


class _References(HTMLParser):
    """Files a page loads (script src, link href, img src, inline style url()) and its links."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.links: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "img") and a.get("src"):
            self.loads.append(a["src"])
        elif tag == "link" and a.get("href"):
            self.loads.append(a["href"])
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
        self._in_style = tag == "style"

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.loads += CSS_URL.findall(data)


def _local(base: Path, ref: str) -> Path | None:
    """The file a relative reference names, or None for an in-page or data: reference."""
    if ref.startswith(("#", "data:", "javascript:")) or not urlsplit(ref).path:
        return None
    return (base / unquote(urlsplit(ref).path)).resolve()


def test_every_file_a_page_loads_or_links_is_in_the_site(docs: Path) -> None:
    missing = []
    stylesheets = set()
    for page in docs.rglob("*.html"):
        refs = _References()
        refs.feed(page.read_text())
        assert refs.loads, page
        for ref in refs.loads + refs.links:
            target = _local(page.parent, ref)
            if target is not None and not target.is_file():
                missing.append(f"{page.relative_to(docs)}: {ref}")
            elif target is not None and target.suffix == ".css":
                stylesheets.add(target)
    # the vendored stylesheets' own files (Font Awesome's webfonts)
    assert docs.resolve() / "static/vendor/fontawesome/css/all.min.css" in stylesheets
    for css in stylesheets:
        for ref in CSS_URL.findall(css.read_text()):
            target = _local(css.parent, ref)
            if target is not None and not target.is_file():
                missing.append(f"{css.relative_to(docs.resolve())}: {ref}")
    assert missing == []


def test_each_cdn_address_has_its_copy_in_the_package() -> None:
    for address, local in LOCAL_COPIES.items():
        if local.startswith("vendor/"):
            assert (STATIC_DIR / local).is_file(), address


def test_vendored_scripts_match_the_integrity_hashes_gx_names() -> None:
    """GX pins popper and bootstrap by Subresource Integrity: the copies are those files."""
    imports = (
        files("great_expectations") / "render/view/templates/js_script_imports.j2"
    ).read_text()
    pinned = re.findall(r'src="(https://[^"]+)" integrity="sha384-([^"]+)"', imports)
    assert len(pinned) == 2
    for address, digest in pinned:
        copy = (STATIC_DIR / LOCAL_COPIES[address]).read_bytes()
        assert base64.b64encode(hashlib.sha384(copy).digest()).decode() == digest, address
