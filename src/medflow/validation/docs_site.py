"""Great Expectations Data Docs that open offline: no page loads or links anything outside.

GX's templates load CSS/JS from public CDNs and link its website. The site configured here
renders the same templates through a custom view (GX's `view` option of a site section) whose
template loader points each CDN address at a copy shipped in `static/vendor/` and drops the
outside links; the site builder copies those files next to the pages.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from great_expectations.render.renderer.site_builder import SiteBuilder
from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView
from jinja2 import BaseLoader, Environment, TemplateError

# Copied to the site's static/ folder: vendor/<library>/... (sources in vendor/SOURCES.md).
STATIC_DIR = Path(__file__).with_name("static")

# Every external address in GX 1.24's templates -> its local copy under the site's static/.
LOCAL_COPIES: Mapping[str, str] = {
    "https://cdn.jsdelivr.net/npm/vega@5": "vendor/vega/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vendor/vega-lite/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vendor/vega-embed/vega-embed.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": (
        "vendor/fontawesome/css/all.min.css"
    ),
    "https://code.jquery.com/jquery-3.7.1.min.js": "vendor/jquery/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": (
        "vendor/popper/popper.min.js"
    ),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": (
        "vendor/bootstrap/js/bootstrap.min.js"
    ),
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": (
        "vendor/bootstrap/css/bootstrap.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": (
        "vendor/bootstrap-table/bootstrap-table.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": (
        "vendor/bootstrap-table/bootstrap-table.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.js": (
        "vendor/bootstrap-table/extensions/filter-control/bootstrap-table-filter-control.min.js"
    ),
    # GX names 1.19.0 for the filter-control CSS (.css on pages, .min.css on the index)
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.css": (
        "vendor/bootstrap-table/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.css": (
        "vendor/bootstrap-table/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/"
    "bootstrap-datepicker.min.js": "vendor/bootstrap-datepicker/js/bootstrap-datepicker.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/"
    "bootstrap-datepicker.min.css": "vendor/bootstrap-datepicker/css/bootstrap-datepicker.min.css",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/"
    "bootstrap-prefers-dark.css": "vendor/bootstrap-dark/css/bootstrap-prefers-dark.min.css",
    # the dark-mode logo of the navbar (data_docs_default_styles.css) has no local copy
    "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png": (
        "images/logo-long.png"
    ),
}
_GX_IMAGES = '"https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"'

# Edits of single GX templates, (old, new) pairs; `site_root` is the page's way to the site's
# root folder ("", "../", ...). An edit whose old text is gone stops the build (GX changed).
EDITS: Mapping[str, tuple[tuple[str, str], ...]] = {
    # the navbar logo: GX's own copy, not the one on its web server
    "top_navbar.j2": ((_GX_IMAGES, 'site_root ~ "static/images/"'),),
    "ge_info.j2": (
        ('<a href="https://greatexpectations.io">Great Expectations</a>', "Great Expectations"),
    ),
    # GX's path is one folder short on validation pages
    "favicon.j2": (
        (
            '{{ static_images_dir + "favicon.ico" }}',
            '{{ site_root ~ "static/images/favicon.ico" }}',
        ),
    ),
    # a newsletter sign-up link, commented out
    "cloud-footer.j2": (("<footer>", "{#"), ("</footer>", "#}")),
}


class _OfflineLoader(BaseLoader):
    """GX's templates with EDITS applied and each LOCAL_COPIES address made local."""

    def __init__(self, gx_loader: BaseLoader) -> None:
        self.gx_loader = gx_loader

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = self.gx_loader.get_source(environment, template)
        for old, new in EDITS.get(template, ()):
            if old not in source:
                raise TemplateError(
                    f"Great Expectations' template {template} no longer contains {old!r};"
                    " update medflow.validation.docs_site.EDITS"
                )
            source = source.replace(old, new)
        for address, local in LOCAL_COPIES.items():
            source = source.replace(address, "{{ site_root }}static/" + local)
        return source, filename, uptodate


def site_root(document: Any) -> str:
    """The relative way from a rendered page to the site's root folder, as GX lays pages out:
    index.html, expectations/<suite>.html, validations/<suite>/<run>/<time>/<batch>.html
    (a dot in a suite name is one more folder)."""
    get = document.get if isinstance(document, Mapping) else lambda k: getattr(document, k, None)
    kind = get("renderer_type") or ""
    dots = (get("expectation_suite_name") or "").count(".")
    if "ValidationResults" in kind or "ProfilingResults" in kind:
        return "../" * (dots + 4)
    if "ExpectationSuite" in kind:
        return "../" * (dots + 1)
    return ""


class _Offline:
    """Mixin for GX's Jinja page views: offline templates, and `site_root` for them."""

    env: Environment

    def __init__(self, custom_styles_directory=None, custom_views_directory=None) -> None:
        super().__init__(custom_styles_directory, custom_views_directory)  # type: ignore[call-arg]
        self.env.loader = _OfflineLoader(self.env.loader)  # type: ignore[arg-type]

    def render(self, document: Any, template: Any = None, **kwargs: Any) -> str:
        kwargs.setdefault("site_root", site_root(document))
        return super().render(document, template, **kwargs)  # type: ignore[misc]


class OfflinePageView(_Offline, DefaultJinjaPageView):
    """Expectation suite and validation result pages."""


class OfflineIndexPageView(_Offline, DefaultJinjaIndexPageView):
    """The site's index.html."""


class OfflineSiteBuilder(SiteBuilder):
    """GX's site builder, plus the vendored files in the site's static/ folder."""

    def build(self, resource_identifiers=None, build_index: bool = True):
        built = super().build(resource_identifiers, build_index=build_index)
        assets = self.target_store.store_backends["static_assets"]
        for path in sorted(p for p in STATIC_DIR.rglob("*") if p.is_file()):
            key = ("static", *path.relative_to(STATIC_DIR).parts)
            content_type, encoding = mimetypes.guess_type(path.name, strict=False)
            assets.set(
                key,
                path.read_bytes(),
                content_type=content_type or "application/octet-stream",
                content_encoding=encoding,
            )
        # GX copies its stylesheet as it is (pages inline it): the copy, made offline too.
        css = OfflinePageView().env.get_template("data_docs_default_styles.css")
        assets.set(
            ("static", "styles", "data_docs_default_styles.css"),
            css.render(site_root="../../").encode(),
            content_type="text/css",
        )
        return built


def site_config(docs_dir: Path) -> dict[str, Any]:
    """A Data Docs site (GX `add_data_docs_site` config) writing offline pages to docs_dir."""
    module = __name__
    view = {"module_name": module, "class_name": OfflinePageView.__name__}
    return {
        "module_name": module,
        "class_name": OfflineSiteBuilder.__name__,
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(Path(docs_dir).resolve()),
        },
        # the how-to buttons and walkthrough link GX's online documentation
        "show_how_to_buttons": False,
        "site_index_builder": {
            "class_name": "DefaultSiteIndexBuilder",
            "view": {"module_name": module, "class_name": OfflineIndexPageView.__name__},
        },
        # The index links each suite's own page, so those are built too (a link to a
        # missing page would break the docs); the profiling section is unused.
        "site_section_builders": {
            "expectations": {"view": view},
            "validations": {"view": view},
            "profiling": "None",
        },
    }
