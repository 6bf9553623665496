"""The relevance figures of a set of served answers, vectorised over `Answers` and a `Catalog`.

`compute(answers, catalog)` gives every figure under the names of `FIGURES`. Each figure is a
function of its own, its formula and source in its docstring. Conventions, held by all:

- A list is an answer's creators the catalog holds. A creator it does not hold is counted
  (`unknown_items`) and left out of every figure, as are the slots past a list's end.
- "Exposure" figures pool the slots of all lists: each listed creator is one unit of exposure
  (coverage, Gini, new and long-tail shares). "Per-list" figures average each list's value over
  the lists where it is defined (popularity, novelty, diversity, calibration), so a fan's short
  list weighs as much as a long one, as the papers average over users.
- A figure with nothing to measure is NaN, never 0 (0 would read as a measurement): the figures
  of an empty log, diversity without a list of two, calibration without a fan with a history.

Tests check each against a plain-loop reference on hand-made logs and against values worked by
hand (tests/monitoring/test_metrics.py).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from monitoring.answers import Answers
from monitoring.catalog import Catalog
from ranking.diversity import ALPHA

DAY = 86_400.0
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
FIGURES = (
    "answers",
    "fans",
    "unknown_items",
    "unknown_share",
    "empty_share",
    "short_share",
    "cold_start_share",
    "popular_share",
    "degraded_share",
    "coverage",
    "gini",
    "new_share",
    "long_tail_share",
    "mean_popularity",
    "novelty",
    "intra_list_diversity",
    "personalisation",
    "calibration_kl",
    *(f"score_p{round(q * 100):02d}" for q in QUANTILES),
    "score_mean",
    "online_recall",
    "later_interactions",
)
"""Every figure `compute` returns, in this order (alerts and reports name them)."""


def compute(
    answers: Answers,
    catalog: Catalog,
    *,
    new_days: float = 30.0,
    head_share: float = 0.2,
    pairs: int = 10_000,
    diversity_lists: int | None = 20_000,
    seed: int = 0,
) -> dict[str, float]:
    """Every figure of FIGURES for `answers` measured against `catalog` (module docstring).

    `pairs` and `diversity_lists` bound the two figures whose cost grows past linear: the
    personalisation pairs and the lists intra-list diversity reads (None: all), both drawn
    with `seed`, so a rerun gives the same figures."""
    a = answers.bind(catalog)
    figures = {**counts(a), "coverage": coverage(a, catalog), "gini": gini(a, catalog)}
    figures["new_share"] = new_share(a, catalog, new_days)
    figures["long_tail_share"] = long_tail_share(a, catalog, head_share)
    figures["mean_popularity"] = mean_popularity(a, catalog)
    figures["novelty"] = novelty(a, catalog)
    figures["intra_list_diversity"] = intra_list_diversity(a, catalog, diversity_lists, seed)
    figures["personalisation"] = personalisation(a, catalog, pairs, seed)
    figures["calibration_kl"] = calibration_kl(a, catalog)
    figures.update(score_figures(a))
    recall, eligible = online_recall(a, catalog)
    figures["online_recall"], figures["later_interactions"] = recall, float(eligible)
    return {name: float(figures[name]) for name in FIGURES}


def _share(part, whole) -> float:
    return float(part) / float(whole) if whole else float("nan")


def _per_list_mean(a: Answers, values: np.ndarray) -> float:
    """Mean over lists with a known creator of the list's mean of `values` [m] (one per
    known slot, `a.listed` order)."""
    on = a.sizes > 0
    if not on.any():
        return float("nan")
    sums = np.bincount(a.list_of, weights=values, minlength=len(a))
    return float(np.mean(sums[on] / a.sizes[on]))


def counts(a: Answers) -> dict[str, float]:
    """What was logged: answers; distinct fans; listed creators the catalog lacks (count and
    share of listed slots); and the shares of answers that were empty, short (fewer creators
    than the k asked), cold starts, answered by the popular fallback, or degraded."""
    n, lengths = len(a), a.lengths
    listed = int(lengths.sum())
    asked = a.k >= 0
    return {
        "answers": float(n),
        "fans": float(np.count_nonzero(np.bincount(a.fan[a.fan >= 0], minlength=1))),
        "unknown_items": float(a.unknown),
        "unknown_share": _share(a.unknown, listed),
        "empty_share": _share((lengths == 0).sum(), n),
        "short_share": _share((asked & (lengths < a.k)).sum(), asked.sum()),
        "cold_start_share": _share(a.cold_start.sum(), n),
        "popular_share": _share((a.source == "popular").sum(), n),
        "degraded_share": _share(sum(d is not None for d in a.degraded), n),
    }


def exposure(a: Answers, catalog: Catalog) -> np.ndarray:
    """[C] how many times each catalog creator was listed."""
    return np.bincount(a.listed, minlength=len(catalog))


def coverage(a: Answers, catalog: Catalog) -> float:
    """Catalog coverage: |∪_u L(u)| / |C|, the share of the catalog listed at least once
    (Ge, Delgado-Battenfeld & Jannach, "Beyond accuracy", RecSys 2010; Adomavicius & Kwon's
    aggregate diversity, IEEE TKDE 2012, divided by the catalog's size)."""
    if len(catalog) == 0 or len(a.listed) == 0:
        return float("nan")
    return float((exposure(a, catalog) > 0).mean())


def gini(a: Answers, catalog: Catalog) -> float:
    """Gini index of creator exposure over the whole catalog (Castells, Hurley & Vargas,
    "Novelty and Diversity in Recommender Systems", Recommender Systems Handbook, 2015):

        Gini = 1/(|C| − 1) · Σ_{j=1..|C|} (2j − |C| − 1) · p(c_j),

    p(c) = c's share of all exposure, creators sorted by ascending p. 0 when every creator is
    listed equally, 1 when one creator takes all exposure. (The textbook sample Gini divides
    by |C| and tops out at (|C| − 1)/|C|; some libraries use that one.)"""
    e = exposure(a, catalog).astype(np.float64)
    c, total = len(e), e.sum()
    if c < 2 or total == 0:
        return float("nan")
    p = np.sort(e) / total
    j = np.arange(1, c + 1)
    return float(((2 * j - c - 1) * p).sum() / (c - 1))


def new_share(a: Answers, catalog: Catalog, new_days: float = 30.0) -> float:
    """Share of exposure to new creators: of all listed slots, those whose creator was first
    seen (`Catalog.first_seen`) less than `new_days` days before the answer's time; a creator
    of unknown first-seen time is not new. A figure of this project (issue 18), pooled over
    slots like the other exposure shares."""
    if len(a.listed) == 0:
        return float("nan")
    span = new_days * DAY
    since = a.ts - span  # first seen after this: new at that answer
    first = catalog.first_seen
    # new to every answer, to none, or it depends on the answer (seen within the log's span):
    # only the last kind needs a comparison per slot, and a window's log holds few of those
    status = np.where(first > since.max(), 1, np.where(first > since.min(), 2, 0)).astype(np.int8)
    state = status[a.listed]
    new = np.count_nonzero(state == 1)
    depends = np.flatnonzero(state == 2)
    if len(depends):
        new += np.count_nonzero(first[a.listed[depends]] > since[a.list_of[depends]])
    return _share(new, len(a.listed))


def head(catalog: Catalog, head_share: float = 0.2) -> np.ndarray:
    """[C] bool: the short head, the most popular creators that together make `head_share` of
    the training interactions (the smallest such set, ties by row; Abdollahpouri, Burke &
    Mobasher, "Managing Popularity Bias in Recommender Systems with Personalized Re-ranking",
    FLAIRS 2019). Every other creator is the long tail."""
    pop = catalog.popularity
    order = np.lexsort((np.arange(len(pop)), -pop))  # most popular first, ties by row
    before = np.cumsum(pop[order]) - pop[order]  # interactions of the more popular creators
    out = np.zeros(len(pop), bool)
    out[order] = before < head_share * pop.sum()  # still short of the share: in the head
    return out


def long_tail_share(a: Answers, catalog: Catalog, head_share: float = 0.2) -> float:
    """Share of exposure to the long tail: listed slots whose creator is not in the short head
    (`head`). Abdollahpouri et al.'s APT (RecSys 2017) averages this share per list; pooled
    here, as an exposure share; the two agree when every list has the same length."""
    if len(a.listed) == 0:
        return float("nan")
    tail = ~head(catalog, head_share)
    return _share(np.count_nonzero(tail[a.listed]), len(a.listed))


def mean_popularity(a: Answers, catalog: Catalog) -> float:
    """Average recommended popularity, ARP = 1/|U| · Σ_u Σ_{c ∈ L(u)} φ(c) / |L(u)|, φ(c) the
    creator's training interactions (Yin et al., VLDB 2012; Abdollahpouri et al., FLAIRS
    2019), over lists."""
    return _per_list_mean(a, catalog.popularity[a.listed].astype(np.float64))


def novelty(a: Answers, catalog: Catalog) -> float:
    """Mean self-information, N = 1/|U| · Σ_u 1/|L(u)| · Σ_{c ∈ L(u)} log2(u / k_c), u the fans
    of the training pairs, k_c the creator's fans among them (Zhou et al., "Solving the
    apparent diversity-accuracy dilemma of recommender systems", PNAS 2010). A creator no fan
    followed in training counts as k_c = 1: the most surprising a creator can be."""
    info = np.log2(catalog.num_users / np.maximum(catalog.popularity, 1).astype(np.float64))
    return _per_list_mean(a, info[a.listed])


def intra_list_diversity(
    a: Answers, catalog: Catalog, lists: int | None = 20_000, seed: int = 0, block: int = 4096
) -> float:
    """Intra-list diversity, ILD(L) = 1/(|L|(|L| − 1)) · Σ_{i ≠ j ∈ L} (1 − cos(v_i, v_j)),
    v the creator tower's unit embeddings, averaged over lists of two or more (Castells et
    al., Recommender Systems Handbook, 2015; the complement of Ziegler et al.'s intra-list
    similarity, WWW 2005, which sums instead of averaging). For unit vectors
    Σ_{i ≠ j} cos = |Σ_i v_i|² − |L|, so a list costs one sum, not |L|² products (the sums
    of a block of lists: one sparse product, lists × creators by creators × d).
    `lists`: a seeded sample of that many lists (None: all), as reading every listed
    creator's vector costs more than every other figure together; the mean of 20,000 lists
    has a standard error of 0.3/√20000 ≈ 0.002 where ILD's spread over lists is 0.3. Unlike
    ranking.diversity.intra_list_diversity, a list of one is left out, not counted as 0."""
    at = np.flatnonzero(a.sizes >= 2)
    if lists is not None and len(at) > lists:
        at = np.sort(np.random.default_rng(seed).choice(at, lists, replace=False))
    if len(at) == 0:
        return float("nan")
    offsets = np.r_[0, np.cumsum(a.sizes)]
    values = []
    for start in range(0, len(at), block):
        rows = at[start : start + block]
        size = a.sizes[rows]
        indptr = np.r_[0, np.cumsum(size)]  # the block's lists as rows of a sparse matrix
        slots = np.repeat(offsets[rows] - indptr[:-1], size) + np.arange(indptr[-1])
        lists = sp.csr_matrix(
            (np.ones(len(slots), np.float32), a.listed[slots], indptr), (len(rows), len(catalog))
        )
        s = np.asarray(lists @ catalog.embeddings, np.float64)  # [b, d] each list's sum
        size = size.astype(np.float64)
        values.append(1.0 - ((s * s).sum(1) - size) / (size * (size - 1)))
    return float(np.concatenate(values).mean())


def latest_lists(a: Answers) -> np.ndarray:
    """Positions of each fan's latest answer with a known creator (one list per fan)."""
    on = np.flatnonzero((a.fan >= 0) & (a.sizes > 0))
    order = on[np.lexsort((on, a.ts[on]))]  # by time, then log order
    fans = a.fan[order][::-1]
    _, last = np.unique(fans, return_index=True)  # first in reverse = latest
    return np.sort(order[::-1][last])


def fan_pairs(count: int, pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i ≠ j, of `count` lists: all of them when there are at most `pairs`,
    else `pairs` drawn uniformly with `seed` (with replacement)."""
    if count * (count - 1) // 2 <= pairs:
        i, j = np.triu_indices(count, 1)
        return i, j
    rng = np.random.default_rng(seed)
    i = rng.integers(count, size=pairs)
    j = rng.integers(count - 1, size=pairs)
    return i, j + (j >= i)


def _distinct(lists: np.ndarray) -> np.ndarray:
    """[P, k] bool: each known creator's first place in its list (a repeat is not counted)."""
    k = lists.shape[1]
    earlier = np.tril(np.ones((k, k), bool), -1)  # [i, j]: j comes before i
    return (lists >= 0) & ~((lists[:, :, None] == lists[:, None, :]) & earlier).any(2)


def personalisation(
    a: Answers, catalog: Catalog, pairs: int = 10_000, seed: int = 0, block: int = 2048
) -> float:
    """Personalisation, 1 − mean over pairs of fans of q_ij / L (Zhou et al., PNAS 2010: the
    mean Hamming distance h_ij = 1 − q_ij/L of two top-L lists), q_ij the creators both lists
    hold. Each fan's latest list (`latest_lists`); pairs from `fan_pairs`. Lists of different
    lengths divide by the shorter (L of Zhou's equal lengths), so a short list wholly inside a
    longer one counts as not personalised at all."""
    lists = a.items[latest_lists(a)]
    if len(lists) < 2:
        return float("nan")
    i, j = fan_pairs(len(lists), pairs, seed)
    h = []
    for start in range(0, len(i), block):
        x, y = lists[i[start : start + block]], lists[j[start : start + block]]
        dx, dy = _distinct(x), _distinct(y)
        shared = ((x[:, :, None] == y[:, None, :]) & (y >= 0)[:, None, :]).any(2) & dx
        h.append(1.0 - shared.sum(1) / np.minimum(dx.sum(1), dy.sum(1)))
    return float(np.concatenate(h).mean())


def calibration_kl(a: Answers, catalog: Catalog, block: int = 1 << 22) -> float:
    """Miscalibration, Steck ("Calibrated Recommendations", RecSys 2018):

        C_KL(p, q) = Σ_g p(g|u) · log(p(g|u) / q̃(g|u)),  q̃ = (1 − α)·q + α·p,  α = 0.01,

    p the category mix of the fan's training history (each followed creator once), q the
    list's (each listed creator once), over g with p(g|u) > 0; mean over answers to fans with a
    history and a known creator. The formula of ranking.diversity.kl (the rank stage's), here
    over all lists at once, reading only the categories the fan's history holds; that one
    takes a list at a time, which would not keep up."""
    g = catalog.num_categories
    share = catalog.history_share
    has_history = np.append(np.diff(share.indptr) > 0, False)  # fan row -1 reads False
    on = np.flatnonzero(has_history[a.fan_rows] & (a.sizes > 0))
    if len(on) == 0:
        return float("nan")
    offsets = np.r_[0, np.cumsum(a.sizes)]
    values, step = [], max(1, block // max(g, 1))  # answers per block: [step, G] counts
    for lo in range(0, len(a), step):
        hi = min(lo + step, len(a))
        rows = on[np.searchsorted(on, lo) : np.searchsorted(on, hi)]
        if len(rows):
            slots = slice(offsets[lo], offsets[hi])
            flat = (a.list_of[slots] - lo) * g + catalog.category[a.listed[slots]]
            counts = np.bincount(flat, minlength=(hi - lo) * g)  # [(hi − lo) · G]
            values.append(_kl(a, share, rows, counts.reshape(hi - lo, g), lo))
    return float(np.concatenate(values).mean())


def _kl(a: Answers, share, rows: np.ndarray, counts: np.ndarray, lo: int) -> np.ndarray:
    """C_KL(p, q̃) of answers `rows`, over the nonzero entries of their fans' history mix;
    `counts` [b, G]: the creators per category of the lists of answers lo … lo + b − 1."""
    fans = a.fan_rows[rows]
    start, nnz = share.indptr[fans], np.diff(share.indptr)[fans]
    which = np.repeat(np.arange(len(rows)), nnz)  # the answer of each (answer, g) entry
    at = np.repeat(start - np.r_[0, np.cumsum(nnz)[:-1]], nnz) + np.arange(nnz.sum())
    p, category = share.data[at], share.indices[at]
    q = counts[rows[which] - lo, category] / a.sizes[rows[which]]
    terms = p * np.log(p / ((1 - ALPHA) * q + ALPHA * p))
    return np.bincount(which, weights=terms, minlength=len(rows))


def score_figures(a: Answers) -> dict[str, float]:
    """Quantiles (numpy's default linear interpolation, Hyndman & Fan's type 7) and mean of
    the scores of the model's answers. The popular fallback's scores are training counts, on
    another scale, so its answers are left out."""
    s = a.score_values[np.repeat(a.source == "model", a.score_counts)]
    s = s[np.isfinite(s)]
    names = [f"score_p{round(q * 100):02d}" for q in QUANTILES]
    if len(s) == 0:
        return dict.fromkeys([*names, "score_mean"], float("nan"))
    values = np.quantile(s, QUANTILES).astype(np.float64)
    mean = float(s.mean(dtype=np.float64))
    return {**dict(zip(names, values.tolist(), strict=True)), "score_mean": mean}


def online_recall(a: Answers, catalog: Catalog) -> tuple[float, int]:
    """The online recall proxy of issue 18: of the later interactions (fan f, creator c, time
    t) of fans with an answer logged before t, the share whose creator was in a list served
    to f before t:

        recall = |{(f, c, t) : ∃ answer to f at t' < t listing c}| / |{(f, c, t) : ∃ answer to
        f at t' < t}|

    (recall@k of Herlocker et al., TOIS 2004, with the logged lists as the recommendations
    and what the fan did afterwards as the relevant set). Returns (recall, the denominator);
    NaN without later interactions."""
    later = catalog.later
    if later is None or len(later) == 0 or len(a) == 0:
        return float("nan"), 0
    fan = _index_in(later.fan_ids, a.fan_ids)  # each interaction's fan among the answers'
    first = np.full(len(a.fan_ids) + 1, np.inf)  # the extra entry: fan -1 was never served
    np.minimum.at(first, a.fan[a.fan >= 0], a.ts[a.fan >= 0])
    eligible = first[fan] < later.ts
    if not eligible.any():
        return float("nan"), 0
    keys = fan[eligible] * len(catalog) + later.rows[eligible]
    distinct, which = np.unique(keys, return_inverse=True)
    hit = _first_listed(a, catalog, distinct)[which] < later.ts[eligible]
    return float(hit.mean()), int(eligible.sum())


def _first_listed(a: Answers, catalog: Catalog, keys: np.ndarray) -> np.ndarray:
    """For distinct keys fan · |C| + row: when that creator was first listed to that fan
    (+inf: never). Only the answers to the keys' fans are read, and each of their slots is
    looked up among the keys in Arrow's hash table rather than every slot sorted."""
    wanted = np.zeros(len(a.fan_ids) + 1, bool)  # the extra entry: fan -1, never wanted
    wanted[keys // len(catalog)] = True
    sel = np.flatnonzero(wanted[a.fan])
    known = a.known[sel]
    slot = (a.fan[sel].astype(np.int64)[:, None] * len(catalog) + a.items[sel])[known]
    when = np.broadcast_to(a.ts[sel, None], known.shape)[known]
    at = _index_in(slot, keys)
    first = np.full(len(keys), np.inf)
    np.minimum.at(first, at[at >= 0], when[at >= 0])
    return first


def _index_in(values: np.ndarray, value_set: np.ndarray) -> np.ndarray:
    """Each value's position in `value_set` (-1 absent), by Arrow's hash table."""
    at = pc.index_in(pa.array(values), value_set=pa.array(value_set))
    return at.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
