"""The explorer in a real browser (Debian's chromium, headless, driven by Playwright): find a
fan, see the service's own answer, remove a history creator and see the tower's answer for the
edited history, share the view as a link, use it from the keyboard, and no serious or critical
accessibility violation (axe-core). Screenshots of each view go to artifacts/test-screens/."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from explorer.room import NODE_MODULES
from tests.conftest import REPO

SHOTS = REPO / "artifacts" / "test-screens"
K = 10


@pytest.fixture
def page(browser):
    p = browser.new_page(viewport={"width": 1366, "height": 800})
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    p.close()
    assert errors == [], f"the page raised: {errors}"


def shown(page) -> list[str]:
    return page.locator("#recs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.creatorId)")


def history(page) -> list[str]:
    return page.locator("#history li[data-creator-id]").evaluate_all(
        "items => items.map(li => li.dataset.creatorId)"
    )


def rows_ready(page, n: int = K) -> None:
    page.wait_for_function(f"document.querySelectorAll('#recs tbody tr').length === {n}")
    page.wait_for_function("!document.getElementById('status').textContent.startsWith('Asking')")


def ids(body: dict) -> list[str]:
    return [i["creator_id"] for i in body["items"]]


def no_serious_violations(page, view: str) -> None:
    page.add_script_tag(path=str(NODE_MODULES / "axe-core" / "axe.min.js"))
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    bad = [(v["id"], v["impact"], len(v["nodes"])) for v in result["violations"]
           if v["impact"] in ("serious", "critical")]  # fmt: skip
    assert bad == [], f"{view}: {bad}"


def test_a_fans_view_is_the_services_answer_and_a_removal_is_the_towers(site, page, fans):
    url, _ = site
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{url}/explorer")
    page.fill("#fan", fans[0])
    page.fill("#k", str(K))
    page.click("#find button[type=submit]")
    rows_ready(page)
    served = httpx.post(f"{url}/recommend", json={"user_id": fans[0], "k": K}).json()
    assert shown(page) == ids(served)
    labels = httpx.post(f"{url}/creators", json={"ids": ids(served)}).json()["creators"]
    names = page.locator("#recs tbody tr td:nth-child(2)").all_inner_texts()
    assert names == [c["name"] for c in labels]
    assert all(page.locator("#recs tbody tr td.why").all_inner_texts())  # every item has a why
    page.screenshot(path=str(SHOTS / "fan.png"), full_page=True)
    no_serious_violations(page, "fan view")

    before = history(page)
    stored = httpx.post(f"{url}/what-if", json={"user_id": fans[0], "k": K, "why": 0}).json()
    day = dt.datetime.fromtimestamp(stored["since"][0] / 1000, dt.UTC).date().isoformat()
    assert f"since {day}" in page.locator("#history li").first.inner_text()  # when, beside who
    page.locator("#history li").first.get_by_role("button").click()
    page.wait_for_selector("#edited:not([hidden])")
    rows_ready(page)
    assert history(page) == before[1:]
    edited = httpx.post(
        f"{url}/what-if", json={"user_id": fans[0], "history": before[1:], "k": K, "why": 0}
    ).json()
    assert shown(page) == ids(edited)
    assert "history=" in page.url
    page.screenshot(path=str(SHOTS / "what-if.png"), full_page=True)
    no_serious_violations(page, "what-if view")

    # the link is the view: opened afresh, it shows the same edited list
    link = page.url
    page.goto("about:blank")
    page.goto(link)
    rows_ready(page)
    assert shown(page) == ids(edited) and history(page) == before[1:]


def test_an_empty_fan_starts_cold_and_gets_personal_as_creators_are_added(site, page, fans):
    url, _ = site
    page.goto(f"{url}/explorer?k={K}")
    page.click("#invent")
    rows_ready(page)
    cold = httpx.post(f"{url}/what-if", json={"k": K, "why": 0}).json()
    assert shown(page) == ids(cold) and cold["source"] == "popular"
    first = shown(page)[0]
    page.locator("#recs tbody tr").first.locator("button.quiet").click()  # add it to the history
    page.wait_for_function("document.querySelectorAll('#history li[data-creator-id]').length === 1")
    rows_ready(page)
    warm = httpx.post(f"{url}/what-if", json={"history": [first], "k": K, "why": 0}).json()
    assert warm["source"] == "model" and shown(page) == ids(warm)
    page.screenshot(path=str(SHOTS / "empty-fan.png"), full_page=True)


def test_keyboard_only(site, page, fans):
    url, _ = site
    page.goto(f"{url}/explorer")
    page.keyboard.press("Tab")  # the skip link first
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "fan"
    page.keyboard.type(fans[1])
    page.keyboard.press("Enter")
    rows_ready(page)
    before = history(page)
    page.focus("#history li button")
    page.keyboard.press("Enter")
    page.wait_for_selector("#edited:not([hidden])")
    rows_ready(page)
    assert history(page) == before[1:]


def test_a_bad_fan_id_is_said_plainly(site, page):
    url, _ = site
    page.goto(f"{url}/explorer?fan={'x' * 200}")
    page.wait_for_selector("#status.error")
    text = page.inner_text("#status")
    assert "user_id" in text and len(text) < 300


def test_the_map_marks_the_fans_history_and_recommendations(site, page, fans):
    url, _ = site
    page.goto(f"{url}/explorer?fan={fans[2]}&k={K}")
    rows_ready(page)
    page.click("#show-map")
    page.wait_for_function(
        "document.getElementById('map-status').textContent.includes('recommended')"
    )
    served = httpx.get(f"{url}/map").json()
    # every map point is drawn, in a WebGL trace per category, plus the two marked traces
    drawn = page.evaluate(
        "() => document.getElementById('map').data.map(t => [t.name, t.type, t.x.length])"
    )
    by_name = {name: n for name, _, n in drawn}
    assert (
        sum(n for name, _, n in drawn if name not in ("history", "recommended")) == served["points"]
    )
    assert {t for _, t, _ in drawn} == {"scattergl"}
    assert by_name["recommended"] == K and by_name["history"] == len(history(page))
    assert page.locator("#map canvas").count() > 0
    page.screenshot(path=str(SHOTS / "map.png"), full_page=True)
    no_serious_violations(page, "map view")


def test_two_versions_side_by_side_and_over_a_sample(site, second_version, page, fans):
    url, rec = site
    first = rec.bundle.index_version
    page.goto(f"{url}/explorer?fan={fans[3]}&k={K}")
    rows_ready(page)
    page.wait_for_function("document.getElementById('version-b').options.length === 2")
    assert page.input_value("#version-a") == first  # the served one
    assert page.input_value("#version-b") == second_version  # the candidate
    page.click("#compare button[type=submit]")
    page.wait_for_function(
        "document.getElementById('compare-status').textContent.startsWith('overlap')"
    )
    pair = {"a": first, "b": second_version, "k": K}
    api = httpx.post(f"{url}/compare", json={"user_id": fans[3], **pair}).json()
    for side in ("a", "b"):
        rows = page.locator(f"#compare-{side} tbody tr")
        assert rows.evaluate_all("rs => rs.map(r => r.dataset.creatorId)") == ids(api[side])
    assert f"{api['overlap']:.2f}" in page.inner_text("#compare-status")
    page.click("#compare-sample")
    page.wait_for_selector("#compare-summary:not([hidden])")
    sample = httpx.post(f"{url}/compare/sample", json={**pair, "fans": 200}).json()
    summary = page.inner_text("#compare-summary")
    assert f"{sample['mean_overlap']:.3f}" in summary
    assert f"{100 * sample['share_changed']:.1f} %" in summary
    page.screenshot(path=str(SHOTS / "compare.png"), full_page=True)
    no_serious_violations(page, "comparison view")

    link = page.url  # the comparison is a link too
    assert f"a={first}" in link and f"b={second_version}" in link
    page.goto("about:blank")
    page.goto(link)
    page.wait_for_function(
        "document.getElementById('compare-status').textContent.startsWith('overlap')"
    )
    rows = page.locator("#compare-b tbody tr")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.creatorId)") == ids(api["b"])


def test_a_creators_view_shows_similar_creators_and_who_gets_it(site, page, fans):
    url, _ = site
    page.goto(f"{url}/explorer?fan={fans[4]}&k={K}")
    rows_ready(page)
    creator = shown(page)[0]
    page.locator("#recs tbody tr").first.locator("button.link").click()
    page.wait_for_function("document.querySelectorAll('#audience tbody tr').length > 0")
    assert f"creator={creator}" in page.url
    similar = httpx.get(f"{url}/similar/{creator}", params={"k": 10}).json()
    names = httpx.post(f"{url}/creators", json={"ids": ids(similar)}).json()["creators"]
    shown_similar = page.locator("#similar li").all_inner_texts()
    assert [t.split(" (")[0] for t in shown_similar] == [c["name"] for c in names]
    audience = httpx.get(f"{url}/creators/{creator}/audience", params={"k": K}).json()
    assert f"{audience['recommended_to']} of {audience['fans']}" in page.inner_text(
        "#audience-note"
    )
    top = page.locator("#audience tbody tr").first
    category = top.get_attribute("data-category")
    assert category == max(audience["mix"], key=audience["mix"].get)
    assert f"{100 * audience['mix'][category]:.1f} %" in top.inner_text()
    page.screenshot(path=str(SHOTS / "creator.png"), full_page=True)
    no_serious_violations(page, "creator view")


def test_a_fan_is_found_by_a_creator_they_follow(site, page):
    url, rec = site
    creator = next(iter(rec.bundle.row_of))
    page.goto(f"{url}/explorer")
    page.fill("#followed", creator)
    page.click("#by-creator button[type=submit]")
    page.wait_for_selector("#found:not([hidden]) li")
    listed = page.locator("#found li button").all_inner_texts()
    api = httpx.get(f"{url}/creators/{creator}/fans", params={"limit": 20}).json()
    assert listed == api["fans"] and listed
    page.locator("#found li button").first.click()
    rows_ready(page, n=10)
    assert f"fan={listed[0]}" in page.url
    followed = rec.features.lookup([listed[0]]).followed[0]
    assert int(rec.bundle.vocabulary([creator])[0][0]) in set(followed.tolist())
    no_serious_violations(page, "find by creator")


def test_health_plots_a_versions_training_search_coverage_and_popularity(site, page):
    url, rec = site
    version = rec.bundle.index_version
    page.goto(f"{url}/explorer")
    page.wait_for_function("document.getElementById('health-version').options.length > 0")
    assert page.input_value("#health-version") == version  # the served one first
    page.click("#health button[type=submit]")
    page.wait_for_function("document.getElementById('health-status').textContent.includes('ms')")
    assert f"health={version}" in page.url  # a link to it
    h = httpx.get(f"{url}/versions/{version}/health", params={"k": K}).json()
    drawn = page.evaluate(
        "ids => ids.map(id => document.getElementById(id).data.map(t => [t.name, t.y]))",
        ["health-training", "health-search", "health-coverage", "health-popularity"],
    )
    ev = h["training"]["evaluations"]
    assert dict(drawn[0])["recall@20"] == [e["recall@20"] for e in ev]
    assert dict(drawn[0])["ndcg@20"] == [e["ndcg@20"] for e in ev]
    assert dict(drawn[1])["served"] == [h["search"]["chosen"]["recall"]]
    assert dict(drawn[2])["coverage@20"] == [e["coverage@20"] for e in ev]
    bands = h["recommended"]["bands"]
    assert dict(drawn[3])["recommended (list slots)"] == [b["recommended_share"] for b in bands]
    assert f"{h['recommended']['distinct']:,} distinct creators" in page.inner_text(
        "#health-coverage-text"
    )
    page.screenshot(path=str(SHOTS / "health.png"), full_page=True)
    no_serious_violations(page, "health view")


def test_health_shows_the_drift_from_the_version_it_replaced(site, drifted_site, page):
    url, rec, first = drifted_site
    version = rec.bundle.index_version
    page.goto(f"{url}/explorer?health={version}")
    page.wait_for_selector("#health-drift:not([hidden])")
    d = httpx.get(f"{url}/versions/{version}/health", params={"k": K}).json()["drift"]
    rows = page.locator("#health-drift tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert [r[0] for r in rows] == [f["figure"] for f in d["figures"]]
    shown = {r[0]: r[1:] for r in rows}
    lists = next(f for f in d["figures"] if f["figure"] == "list_overlap")
    assert shown["list_overlap"][:3] == [f"{lists['value']:.3f}", "≥ 1", "over"]
    assert f"top {K}" in shown["list_overlap"][3]
    assert shown["cosine_shift"][1:3] == ["≤ 2", "ok"]
    assert shown["popularity_shift"][1:3] == ["not set", "not checked"]
    assert shown["cosine_shift_unaligned"][1:3] == ["none", "not checked"]
    assert all(r[4] for r in rows)  # each figure said in words
    said = page.inner_text("#health-drift-text")
    assert f"against {first}" in said
    assert "past 1 limit(s) with --allow_drift true: list_overlap" in said
    page.screenshot(path=str(SHOTS / "health-drift.png"), full_page=True)
    no_serious_violations(page, "health view with drift")

    url, rec = site  # its first version: nothing to compare with
    page.goto(f"{url}/explorer?health={rec.bundle.index_version}")
    page.wait_for_function(
        "document.getElementById('health-drift-text').textContent.startsWith('No drift')"
    )
    assert "no current version to compare with" in page.inner_text("#health-drift-text")
    assert page.locator("#health-drift").is_hidden()


def test_search_shows_the_services_answer_with_each_retrievers_rank(site, page, fans):
    url, rec = site
    page.goto(f"{url}/explorer?fan={fans[1]}&k={K}")
    rows_ready(page)
    page.fill("#search-q", "comics")
    page.click("#search button[type=submit]")
    page.wait_for_function("document.getElementById('search-status').textContent.includes(' ms')")
    api = httpx.get(f"{url}/search", params={"q": "comics", "k": K, "user_id": fans[1]}).json()
    shown = page.locator("#search-results tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.creatorId)"
    )
    assert shown == ids(api) and shown
    why = page.locator("#search-results tbody tr td.why").first.inner_text()
    assert all(f"{n} #{r}" in why for n, r in api["items"][0]["ranks"].items())
    status = page.inner_text("#search-status")
    kind = {"name": "a name", "topic": "a topic", "fan topic": "a topic, for this fan"}[
        api["fusion"]["query"]
    ]
    assert "personal" in status and f"read as {kind}" in status and "q=comics" in page.url
    name = str(rec.bundle.catalog["name"][int(rec.bundle.popular[0])])
    page.fill("#search-q", "")
    page.type("#search-q", name[:3])  # keystroke by keystroke: completion as one types
    expected = httpx.get(f"{url}/suggest", params={"prefix": name[:3], "n": 8}).json()
    page.wait_for_function(
        f"document.querySelectorAll('#search-suggest option').length === {len(expected['items'])}"
    )
    options = page.locator("#search-suggest option").evaluate_all("os => os.map(o => o.value)")
    assert options == [i["name"] for i in expected["items"]]
    page.screenshot(path=str(SHOTS / "search.png"), full_page=True)
    no_serious_violations(page, "search")


def ranked_rows(page) -> list[tuple[str, str]]:
    """(creator id, before) of each row of the rank stage's table."""
    rows = page.locator("#rank-results tbody tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.creatorId, r.children[1].textContent])"
    )
    return [tuple(r) for r in rows]


def test_the_rank_stage_shows_places_before_and_after_and_its_controls_answer_live(
    ranked_site, page, fans
):
    url, _ = ranked_site
    page.goto(f"{url}/explorer?fan={fans[2]}&k={K}")
    page.wait_for_function("document.getElementById('rank-status').textContent.includes('moved')")
    served = httpx.post(f"{url}/rank", json={"user_id": fans[2], "k": K}).json()
    assert ranked_rows(page) == [(i["creator_id"], str(i["before"])) for i in served["items"]]
    assert shown(page) == ids(served)  # the fan's view is the ranked answer too
    assert all(page.locator("#rank-results tbody td.why").all_inner_texts())  # what moved each
    page.screenshot(path=str(SHOTS / "ranking.png"), full_page=True)
    no_serious_violations(page, "rank stage")

    page.select_option("#rank-method", "calibration")
    page.fill("#rank-lambda", "0.9")
    page.dispatch_event("#rank-lambda", "input")
    page.wait_for_function(
        "document.getElementById('rank-status').textContent.includes('calibration 0.9')"
    )
    live = httpx.post(f"{url}/rank", json={"user_id": fans[2], "k": K, "calibration": 0.9}).json()
    assert ranked_rows(page) == [(i["creator_id"], str(i["before"])) for i in live["items"]]


def test_health_shows_the_monitors_figures_of_what_was_served(monitored_site, page, fans):
    from common import config
    from monitoring import monitor
    from monitoring.config import MonitorConfig

    url, rec, log = monitored_site
    version = rec.bundle.index_version
    assert httpx.get(f"{url}/monitor/report").status_code == 404  # before the monitor ran
    for fan in fans[:30]:
        assert httpx.post(f"{url}/recommend", json={"user_id": fan, "k": K}).status_code == 200
    deadline = dt.datetime.now() + dt.timedelta(seconds=10)
    while log.counts["written"] < 30 and dt.datetime.now() < deadline:  # written off-path
        page.wait_for_timeout(50)
    values = {"name": "t", "log": str(log.path), "index": str(rec.index_root), "wandb": False}
    cfg = config.load(MonitorConfig, values=values)
    result = monitor.run(cfg)
    row = result["rows"][-1]
    assert row["answers"] == 30 and row["index_version"] == version
    page.goto(f"{url}/explorer?health={version}")
    page.wait_for_selector("#health-monitor:not([hidden])")
    shown = dict(page.locator("#health-monitor tbody tr").evaluate_all(
        "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])"))  # fmt: skip
    assert shown["answers"] == "30"
    assert shown["coverage"] == f"{100 * row['coverage']:.1f} %"
    assert shown["gini"] == f"{row['gini']:.3f}"
    assert shown["personalisation"] == f"{row['personalisation']:.3f}"
    assert "No breach" in page.inner_text("#health-monitor-text")
    report = httpx.get(f"{url}/monitor/report.html")
    assert report.status_code == 200 and "Relevance monitor" in report.text
    missing = httpx.get(f"{url}/monitor/report", params={"version": "v99999-none"})
    assert missing.status_code == 404 and "v99999-none" in missing.json()["detail"]
    no_serious_violations(page, "health view with the monitor's figures")
