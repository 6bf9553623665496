"""The live-metric alerting rules (monitoring.live) under Prometheus's own promtool: the committed
file is what the shipped config gives and passes `promtool check rules`, and each alert, on
input series worked by hand, fires past its limit once `for` has passed and stays quiet below
it (`promtool test rules`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from common.errors import ConfigError
from monitoring import live
from tests.conftest import REPO

CONFIG = "configs/monitoring/synthetic_demo.yaml"
PROMTOOL = shutil.which("promtool")
# the thresholds the hand-worked cases below are worked against (not the shipped ones)
LIMITS = live.LiveThresholds(
    latency_p99_seconds={"recommend": 0.1, "search": 0.25},
    fallback_share=0.05,
    error_share=0.01,
    version_age_seconds=7 * 86400,
    model_age_seconds=30 * 86400,
    for_duration="5m",
    window="5m",
)
MINUTES = 30  # each input series runs 0m..30m, a sample a minute


@pytest.fixture(scope="module")
def promtool() -> str:
    if PROMTOOL is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: .ci/run installs Debian's `prometheus`")
        pytest.skip("promtool is not installed: `apt-get install prometheus` (Debian)")
    return PROMTOOL


def cumulative(*spans: tuple[int, float], start: float = 0.0) -> str:
    """A counter's samples, a minute apart: `spans` of (minutes, increase per minute)."""
    values, total = [start], start
    for minutes, per_minute in spans:
        for _ in range(minutes):
            total += per_minute
            values.append(total)
    assert len(values) == MINUTES + 1
    return " ".join(f"{v:g}" for v in values)


def steady(per_minute: float, start: float = 0.0) -> str:
    return cumulative((MINUTES, per_minute), start=start)


UNKNOWN = " ".join(["NaN"] * (MINUTES + 1))
"""A gauge the service exposes as NaN all along (an age it does not know)."""


def histogram(endpoint: str, per_minute: list[tuple[int, float, float]]) -> list[dict]:
    """towerline_request_seconds buckets of `endpoint` for spans of (minutes, observations per
    minute, their latency): each observation counts in every bucket at or above it."""
    bounds = [*map(str, live.BUCKETS), "+Inf"]
    out = []
    for le in bounds:
        spans = [(m, n if le == "+Inf" or s <= float(le) else 0) for m, n, s in per_minute]
        labels = f'endpoint="{endpoint}",le="{le}"'
        out.append(
            {
                "series": f"towerline_request_seconds_bucket{{{labels}}}",
                "values": cumulative(*spans),
            }
        )
    return out


def rule_of(name: str, endpoint: str | None = None) -> dict:
    rules = live.alerting_rules(LIMITS)["groups"][0]["rules"]
    return next(
        r for r in rules if r["alert"] == name and r["labels"].get("endpoint", endpoint) == endpoint
    )


def fired(name: str, value: str, endpoint: str | None = None, **labels) -> dict:
    """The alert promtool should report: the rule's labels and its annotations rendered with
    `value` (the text the template's $value part gives, worked by hand)."""
    rule = rule_of(name, endpoint)
    annotations = {}
    for key, text in rule["annotations"].items():
        text = re.sub(r"\{\{[^}]*\$value[^}]*\}\}", value, text)
        annotations[key] = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: endpoint, text)
    return {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": annotations}


def run_cases(promtool: str, tmp_path, cases: list[dict]) -> None:
    live.write_rules(LIMITS, tmp_path / "rules.yml", "the test's limits")
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": cases}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    done = subprocess.run(
        [promtool, "test", "rules", "tests.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def case(series: list[dict], *checks: tuple[str, str, list[dict]]) -> dict:
    """One promtool test: input series, then (eval time, alert name, alerts expected)."""
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": at, "alertname": name, "exp_alerts": alerts}
            for at, name, alerts in checks
        ],
    }


# -- the committed file -----------------------------------------------------------------------


def test_the_committed_rules_are_what_the_shipped_config_gives():
    thresholds = live.load_thresholds(REPO / CONFIG)
    assert live.RULES_PATH.read_text() == live.render(thresholds, REPO / CONFIG), (
        f"regenerate: python -m monitoring.live --config {CONFIG}"
    )
    assert live.main(["--config", str(REPO / CONFIG), "--check"]) == 0


def test_check_fails_on_a_stale_file_and_a_write_makes_it_current(tmp_path, capsys):
    out = tmp_path / "rules.yml"
    out.write_text(live.RULES_PATH.read_text().replace("> 0.1", "> 0.2"))
    argv = ["--config", str(REPO / CONFIG), "--output", str(out)]
    assert live.main([*argv, "--check"]) == 4
    assert "regenerate it" in capsys.readouterr().out
    assert live.main(argv) == 0 and live.main([*argv, "--check"]) == 0
    assert out.read_text() == live.RULES_PATH.read_text()


def test_promtool_checks_the_committed_rules(promtool):
    done = subprocess.run(
        [promtool, "check", "rules", str(live.RULES_PATH)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rules = yaml.safe_load(live.RULES_PATH.read_text())["groups"][0]["rules"]
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout
    names = {r["alert"] for r in rules}
    assert names == {
        "TowerlineLatencyP99High",
        "TowerlineFallbackShareHigh",
        "TowerlineErrorShareHigh",
        "TowerlineVersionTooOld",
        "TowerlineModelTooOld",
    }


# -- each alert, by hand-worked series ----------------------------------------------------------


def test_latency_p99_fires_per_endpoint_after_for_and_clears(promtool, tmp_path):
    # /recommend: 100 answers a minute between 0.128 and 0.256 s for 10 minutes, then 4-8 ms.
    # p99 = 0.128 + (0.256 - 0.128) * 0.99 = 0.25472 s > 0.1 from the first rate (1m): pending
    # until 1m + 5m, firing at 10m; at 20m the window holds only fast answers (p99 7.96 ms).
    # /search: 4-8 ms throughout, p99 7.96 ms < 0.25: never.
    slow = histogram("recommend", [(10, 100, 0.2), (20, 100, 0.006)])
    fast = histogram("search", [(MINUTES, 100, 0.006)])
    recommend = fired("TowerlineLatencyP99High", "0.255", "recommend")
    run_cases(
        promtool,
        tmp_path,
        [
            case(
                slow + fast,
                ("4m", "TowerlineLatencyP99High", []),
                ("10m", "TowerlineLatencyP99High", [recommend]),
                ("20m", "TowerlineLatencyP99High", []),
            )
        ],
    )


def test_fallback_share_counts_fallbacks_but_not_cold_starts(promtool, tmp_path):
    # 20 of 100 answers a minute from the popular list (feature store down): 20 % > 5 %. The
    # 404s of /similar are requests but not answers: they do not dilute the share.
    answers = {
        "series": 'towerline_requests_total{endpoint="recommend",status="200",source="model"}',
        "values": steady(100),
    }
    not_found = {
        "series": 'towerline_requests_total{endpoint="similar",status="404",source=""}',
        "values": steady(1000),
    }
    down = {
        "series": 'towerline_fallbacks_total{endpoint="recommend",'
        'reason="feature_store_unavailable"}',
        "values": steady(20),
    }
    # 50 cold starts and 2 fallbacks of 100 answers: 2 % < 5 %, cold starts are by design
    cold = {
        "series": 'towerline_fallbacks_total{endpoint="recommend",reason="cold_start"}',
        "values": steady(50),
    }
    few = {
        "series": 'towerline_fallbacks_total{endpoint="recommend",reason="user_tower_unavailable"}',
        "values": steady(2),
    }
    run_cases(
        promtool,
        tmp_path,
        [
            case(
                [answers, not_found, down],
                ("4m", "TowerlineFallbackShareHigh", []),
                ("10m", "TowerlineFallbackShareHigh", [fired("TowerlineFallbackShareHigh", "20%")]),
            ),
            case([answers, cold, few], ("10m", "TowerlineFallbackShareHigh", [])),
        ],
    )


def test_error_share_counts_fans_responses_not_probes(promtool, tmp_path):
    # 5 of 100 responses to /recommend a minute are 503s: 5 % > 1 %; the scraper's 10,000
    # /metrics responses would make it 0.05 % if they counted.
    def responses(route: str, status: int, per_minute: float) -> dict:
        labels = f'route="{route}",status="{status}"'
        return {
            "series": f"towerline_http_responses_total{{{labels}}}",
            "values": steady(per_minute),
        }

    failing = [
        responses("/recommend", 200, 95),
        responses("/recommend", 503, 5),
        responses("/metrics", 200, 10_000),
    ]
    # not ready (/readyz 503) while fans are answered: an orchestrator's matter, not an error
    probes = [
        responses("/recommend", 200, 100),
        responses("/readyz", 503, 60),
        responses("/similar/{creator_id}", 404, 10),
    ]
    run_cases(
        promtool,
        tmp_path,
        [
            case(
                failing,
                ("4m", "TowerlineErrorShareHigh", []),
                ("10m", "TowerlineErrorShareHigh", [fired("TowerlineErrorShareHigh", "5%")]),
            ),
            case(probes, ("10m", "TowerlineErrorShareHigh", [])),
        ],
    )


def test_version_age_fires_past_its_limit(promtool, tmp_path):
    # built 8 days ago at 0m, the gauge growing a minute a minute: 8d 0h 10m at 10m > 7 days;
    # active from 0m, so firing from 5m. Another worker's younger reading does not hide it
    # (max); a version built an hour ago, or none loaded yet (NaN), never fires.
    old = [
        {
            "series": 'towerline_version_age_seconds{instance="a"}',
            "values": steady(60, start=8 * 86400),
        },
        {"series": 'towerline_version_age_seconds{instance="b"}', "values": steady(60, start=3600)},
    ]
    young = [{"series": "towerline_version_age_seconds", "values": steady(60, start=3600)}]
    unloaded = [{"series": "towerline_version_age_seconds", "values": UNKNOWN}]
    too_old = fired("TowerlineVersionTooOld", "8d 0h 10m 0s")
    run_cases(
        promtool,
        tmp_path,
        [
            case(
                old,
                ("4m", "TowerlineVersionTooOld", []),
                ("10m", "TowerlineVersionTooOld", [too_old]),
            ),
            case(young, ("10m", "TowerlineVersionTooOld", [])),
            case(unloaded, ("10m", "TowerlineVersionTooOld", [])),
        ],
    )


def test_model_age_fires_past_its_limit(promtool, tmp_path):
    # trained 31 days ago at 0m: over 30 days from 0m, firing from 5m. A model without a
    # recorded training time (NaN) never fires; neither does a version's age alone.
    old = [{"series": "towerline_model_age_seconds", "values": steady(60, start=31 * 86400)}]
    unknown = [
        {"series": "towerline_model_age_seconds", "values": UNKNOWN},
        {"series": "towerline_version_age_seconds", "values": steady(60, start=31 * 86400)},
    ]
    too_old = fired("TowerlineModelTooOld", "31d 0h 10m 0s")
    run_cases(
        promtool,
        tmp_path,
        [
            case(
                old,
                ("4m", "TowerlineModelTooOld", []),
                ("10m", "TowerlineModelTooOld", [too_old]),
            ),
            case(unknown, ("10m", "TowerlineModelTooOld", [])),
        ],
    )


# -- the thresholds themselves ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"latency_p99_seconds": {"recomend": 0.1}}, r"no endpoint 'recomend'"),
        ({"latency_p99_seconds": {"recommend": 2.0}}, r"recommend=2.0: use \(0, 1.0\]"),
        ({"fallback_share": 1.5}, r"--live.fallback_share=1.5: use a share in \(0, 1\)"),
        ({"error_share": 0}, r"--live.error_share=0"),
        ({"version_age_seconds": -1}, r"--live.version_age_seconds=-1"),
        ({"model_age_seconds": 0}, r"--live.model_age_seconds=0: use > 0 seconds"),
        ({"window": "5min"}, r"--live.window='5min': use a Prometheus duration"),
        ({"for_duration": "0m"}, r"--live.for_duration='0m'"),
    ],
)
def test_bad_thresholds_name_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        live.LiveThresholds(**values)


def test_a_config_without_a_live_block_says_so(tmp_path):
    path = tmp_path / "monitor.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError, match=r"has no `live:` block"):
        live.load_thresholds(path)
