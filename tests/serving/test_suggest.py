"""`GET /suggest`: the served version's name completion over HTTP; what was typed finds the
creator, the order is popularity, bad input is a clear 422 or a sensible (empty) answer."""

from __future__ import annotations

import pytest

from serving.api.suggest import MAX_PREFIX, SuggestResponse
from tests.serving.conftest import documented


def ask(client, **params) -> dict:
    return documented(client.get("/suggest", params=params), SuggestResponse)


def test_typing_a_name_finds_the_creator_most_popular_first(service):
    client, rec = service
    b = rec.bundle
    row = int(b.popular[0])  # the most popular creator: first among its namesakes and prefixes
    name = str(b.catalog["name"][row])
    for end in (1, 3, len(name)):
        body = ask(client, prefix=name[:end], n=5)
        assert str(b.index.creator_id[row]) in [i["creator_id"] for i in body["items"]], end
        shown = [i["popularity"] for i in body["items"]]
        assert shown == sorted(shown, reverse=True)
    body = ask(client, prefix=name.upper(), n=5)
    assert body["items"][0]["name"].casefold() == name.casefold()
    assert body["index_version"] == b.index_version


def test_nothing_typed_suggests_the_most_popular(service):
    client, rec = service
    b = rec.bundle
    body = ask(client, n=5)
    assert [i["popularity"] for i in body["items"]] == sorted(b.popularity, reverse=True)[:5]


@pytest.mark.parametrize("prefix", ["🙂🙂", "\u200f\u202e", "שלום", "\x01\x02", "!!!", "zzzzqqqq"])
def test_a_prefix_no_name_starts_with_gets_no_suggestion(service, prefix):
    client, _ = service
    assert ask(client, prefix=prefix)["items"] == []


def test_bad_input_is_a_422_naming_the_parameter(service):
    client, _ = service
    r = client.get("/suggest", params={"prefix": "x" * (MAX_PREFIX + 1)})
    assert r.status_code == 422 and "prefix" in r.text
    for n in (0, 21, "many"):
        r = client.get("/suggest", params={"prefix": "a", "n": n})
        assert r.status_code == 422 and "n" in r.json()["detail"][0]["loc"]
    r = client.get("/suggest", params={"prefix": "a" * 10_000})  # 10 KB
    assert r.status_code == 422 and len(r.text) < 2000
