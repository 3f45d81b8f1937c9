"""The hub serves the admin's static files and the API docs' assets itself (no CDN, no nginx)."""

from __future__ import annotations

import re

import pytest
import requests

from tests.conftest import Proc

pytestmark = pytest.mark.django_db(transaction=True)


def test_admin_css_and_api_docs_assets_are_served_locally(hub: Proc) -> None:
    css = requests.get(f"{hub.http}/static/admin/css/base.css", timeout=10)
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    docs = requests.get(f"{hub.http}/v1/docs/", timeout=10)
    assert docs.status_code == 200
    scripts = re.findall(r'src="([^"]+\.js)"', docs.text)
    assert scripts and all(src.startswith("/static/") for src in scripts), scripts
    for src in scripts:
        assert requests.get(f"{hub.http}{src}", timeout=10).status_code == 200
