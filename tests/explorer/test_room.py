"""The explorer room without a browser: mounted by name, and a served version's explorer data
(labels, fans by creator, map, the fan sample's answers) made in the background on load."""

from __future__ import annotations

import time

import httpx
import pytest

from explorer.room import SAMPLE


def test_a_served_version_is_prepared_for_the_explorer_in_the_background(site):
    url, rec = site
    b = rec.bundle
    key = (b.index_version, SAMPLE["k"], SAMPLE["fans"], 0)
    deadline = time.monotonic() + 60
    while key not in rec._audiences and time.monotonic() < deadline:
        time.sleep(0.2)
    assert key in rec._audiences, "the fan sample was not answered in the background"
    assert {"catalog", "followers", "creator_map"} <= set(vars(b))  # cached_property values
    made = rec._audiences[key]
    h = httpx.get(f"{url}/versions/{b.index_version}/health", params=SAMPLE).json()
    assert h["recommended"]["fans"] == len(made.fans)
    assert rec._audiences[key] is made  # read from what is kept, not answered again


def test_the_page_and_its_pinned_libraries_are_served(site):
    url, _ = site
    page = httpx.get(f"{url}/explorer")
    assert page.status_code == 200 and "Towerline explorer" in page.text
    for path in ("/explorer/static/app.js", "/explorer/static/health.js",
                 "/explorer/vendor/plotly/plotly.min.js"):  # fmt: skip
        assert httpx.get(f"{url}{path}").status_code == 200, path


@pytest.mark.parametrize("name", ["nope"])
def test_an_unknown_room_is_refused_naming_the_installed_ones(name):
    from common.errors import ConfigError
    from serving.api.app import mount_rooms

    with pytest.raises(ConfigError, match="explorer"):
        mount_rooms(None, [name])
