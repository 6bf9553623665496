"""`python -m serving try`: a few real fans' answers from a running service, with creator names —
what `make demo` prints to show the whole path works."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from data import tables
from serving.config import ServingConfig
from serving.pipeline.versions import sample_fans


def post(url: str, body: dict, timeout: float = 5.0) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def creator_names(data_dir: Path) -> dict[str, str]:
    t = pq.read_table(data_dir / tables.CREATORS, columns=["creator_id", "name"])
    return {
        c: (n or "")
        for c, n in zip(t["creator_id"].to_pylist(), t["name"].to_pylist(), strict=True)
    }


def try_service(cfg: ServingConfig, users: int, k: int, traffic: int = 0) -> int:
    """A few real fans' answers, the search examples and (with `traffic`) more fans' requests
    from the service `cfg` describes; 1 when no service answers there."""
    from index import store

    url = f"http://{cfg.host}:{cfg.port}"
    manifest = store.read_manifest(Path(cfg.index))
    data_dir = Path(cfg.data or manifest["catalog"]["data_dir"])
    names = creator_names(data_dir)
    fans = [*sample_fans(data_dir, users), "a-fan-who-just-signed-up"]
    try:
        for fan in fans:
            r = _show_recommendations(url, fan, k, names)
        print(f"model {r['model_version'][:12]}, index {r['index_version']}")
        search_examples(url, fans[0], names)
        send_traffic(url, data_dir, traffic)
    except urllib.error.URLError as e:
        print(f"no service at {url}: {e}; start it with `python -m serving up --config ...`")
        return 1
    _print_next_steps(url, cfg)
    return 0


def _show_recommendations(url: str, fan: str, k: int, names: dict[str, str]) -> dict:
    """One fan's /recommend printed with creator names; returns the answer, whose versions
    try_service prints once for all fans."""
    r = post(f"{url}/recommend", {"user_id": fan, "k": k})
    flag = "cold start: popular creators" if r["cold_start"] else r["source"]
    if r["degraded"]:
        flag += f", degraded: {r['degraded']}"
    print(f"{fan} ({flag}; {r['took_ms']:.1f} ms)")
    for item in r["items"]:
        name = names.get(item["creator_id"], "")
        moved = f"  (towers #{item['before']})" if item.get("before") else ""
        print(f"    {item['score']:7.3f}  {item['creator_id']:<14} {name}{moved}")
    return r


def _print_next_steps(url: str, cfg: ServingConfig) -> None:
    """Where to look next (the docs, the explorer when the config serves it) and how to stop
    the service: the demo's last words."""
    explorer = f"\nThe relevance explorer: {url}/explorer" if "explorer" in cfg.rooms else ""
    print(
        f"{explorer}\nThe service is running. Point a browser at {url}/docs (OpenAPI: "
        f"{url}/openapi.json, metrics: {url}/metrics).\nStop it with `make stop` (or "
        f"`python -m serving down --config <config>`)."
    )


def send_traffic(url: str, data_dir: Path, count: int, k: int = 10) -> None:
    """`count` fans' /recommend, one at a time (seeded fans with a history, the demo's
    traffic for the answer log); says how many were answered and how fast."""
    if count <= 0:
        return
    started, sources = time.perf_counter(), Counter()
    for fan in sample_fans(data_dir, count, seed=1):
        sources[post(f"{url}/recommend", {"user_id": fan, "k": k})["source"]] += 1
    seconds = time.perf_counter() - started
    print(f"\n{count} more fans' /recommend (k {k}) in {seconds:.1f} s: "
          f"{', '.join(f'{n} from {s}' for s, n in sources.items())}")  # fmt: skip


SEARCH_EXAMPLE = "comics"
"""A topic of the synthetic catalogs (a category), searched as a fan and as nobody."""


def search_examples(url: str, fan: str, names: dict[str, str]) -> None:
    """One /search, for a fan (with the personal retriever) and without, and one /suggest."""
    query = urllib.parse.urlencode({"q": SEARCH_EXAMPLE, "k": 5, "user_id": fan})
    r = get(f"{url}/search?{query}")
    print(f"\n/search?q={SEARCH_EXAMPLE}&user_id={fan} ({', '.join(r['retrievers'])}, "
          f"{r['fusion']['method']}; {r['took_ms']:.1f} ms)")  # fmt: skip
    for item in r["items"]:
        why = ", ".join(f"{k} #{v}" for k, v in item["ranks"].items())
        print(f"    {item['creator_id']:<14} {item['name']:<34} ({why})")
    prefix = next((n for n in names.values() if n), "a")[:4]
    r = get(f"{url}/suggest?{urllib.parse.urlencode({'prefix': prefix, 'n': 5})}")
    print(f"/suggest?prefix={prefix}: " + "; ".join(i["name"] for i in r["items"]))


def get(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())
