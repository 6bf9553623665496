"""A simulated creator platform: fans follow, join and buy from creators over a period of time.

The generator is a small latent model, so that a retrieval model has something to learn beyond
popularity. Creators have a category, a "community" inside it and a power-law popularity. Each fan
prefers 1-3 categories (the secondary one gains weight over the period: taste drift), one community
inside each, and keeps a few favourite creators there that they come back to again and again.
Nobody interacts before signing up, and no creator is seen before it exists.

Interactions stream in batches; batch c covers the c-th slice of the period and draws only from
`SeedSequence([seed, c])`, so memory is independent of `num_events` and output is reproducible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from data.schema import CREATORS, EVENT_CODE, EVENT_TYPES, INTERACTIONS, TIMESTAMP, USERS
from data.sources.base import Source, with_row_numbers

DAY_MS = 86_400_000
_CHUNK = 1 << 16


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# fmt: off
# Entity tables draw from their own streams, far above any batch index.
_CREATOR_STREAM, _USER_STREAM, _TEXT_STREAM, _PROFILE_STREAM = (2**48 + i for i in range(4))
# Composite sort key (group, time): times are ms since the origin, well below this span.
_SPAN = 2**42

# name, share of users, plural noun for descriptions, name verbs, name nouns, name suffixes, tags
_CATEGORIES = (
    ("music", 0.14, "music", "Sings|Makes Music|Plays Live", "Synth|Vinyl|Melody|Chord|Beat",
     "Lab|Sessions|Records|Collective", "lofi,synthwave,indie,jazz,hip hop,singer-songwriter,"
     "music production,covers,electronic,orchestral"),
    ("podcasts", 0.11, "podcast episodes", "Talks|Podcasts|Asks Why", "Mic|Signal|Fireside|Echo",
     "Podcast|Hour|Show|Radio", "true crime,comedy,interviews,history,news,tech talk,"
     "storytelling,sports talk,culture,science"),
    ("illustration", 0.10, "illustrations", "Illustrates|Draws|Paints", "Ink|Sketch|Pastel|Canvas",
     "Studio|Atelier|Sketchbook|Club", "character design,fan art,watercolor,digital painting,"
     "concept art,portraits,landscapes,anime,sketching,brushes"),
    ("gaming", 0.13, "gaming streams", "Plays|Streams|Speedruns", "Pixel|Respawn|Quest|Loot",
     "Arcade|Guild|Club|Squad", "speedrun,let's play,strategy,indie games,retro,rpg,esports,"
     "modding,game dev,walkthroughs"),
    ("writing", 0.07, "stories", "Writes|Tells Tales|Drafts", "Quill|Chapter|Ink|Margin",
     "Press|Journal|Club|Library", "fantasy,sci-fi,poetry,romance,serial fiction,essays,horror,"
     "worldbuilding,short stories,fanfiction"),
    ("video", 0.12, "videos", "Films|Vlogs|Edits", "Frame|Lens|Reel|Cut", "Studio|Channel|TV|Works",
     "vlogs,documentary,animation,short film,travel,commentary,filmmaking,editing,reviews,"
     "sketch comedy"),
    ("education", 0.07, "lessons", "Teaches|Explains|Tutors", "Chalk|Lecture|Study|Atlas",
     "Academy|Hall|School|Lab", "math,physics,languages,programming,history lessons,exam prep,"
     "economics,biology,chemistry,philosophy"),
    ("comics", 0.06, "comics", "Draws Comics|Inks|Letters", "Panel|Gutter|Inkwell|Splash",
     "Comics|Press|Studio|Strips", "webcomic,manga,superheroes,slice of life,graphic novel,"
     "humor strips,fantasy comics,horror comics,zines,lettering"),
    ("cooking", 0.06, "recipes", "Cooks|Bakes|Grills", "Skillet|Sourdough|Spice|Pantry",
     "Kitchen|Table|Club|Bakery", "baking,vegan,street food,meal prep,bbq,desserts,fermentation,"
     "budget cooking,pasta,spices"),
    ("fitness", 0.05, "workouts", "Lifts|Runs|Trains", "Iron|Stride|Core|Summit",
     "Gym|Club|Academy|Lab", "strength,yoga,running,hiit,mobility,calisthenics,nutrition,"
     "cycling,pilates,coaching"),
    ("photography", 0.04, "photo series", "Shoots|Captures|Frames", "Shutter|Aperture|Film|Prism",
     "Studio|Gallery|Darkroom|Club", "street photography,film photography,portraits,wildlife,"
     "astrophotography,editing presets,travel photos,macro,landscapes,lightroom"),
    ("crafts", 0.05, "craft projects", "Crafts|Knits|Builds", "Yarn|Loom|Clay|Timber",
     "Workshop|Studio|Club|Guild", "knitting,pottery,woodworking,sewing,jewelry,cosplay,"
     "embroidery,leatherwork,3d printing,miniatures"),
)
_NAMES, _CAT_SHARE, _PLURAL, _VERBS, _NOUNS, _SUFFIXES, _TAGS = zip(*_CATEGORIES, strict=True)
_TAG_VOCAB = [tags.split(",") for tags in _TAGS]
_FIRST = _words(
    "Luna Maya Theo Ava Leo Zoe Felix Iris Omar Nina Kai Lena Ezra Mila Jonah Ruby Sami Noor Hugo "
    "Elena Ravi Ines Marco Yuki Tariq Clara Diego Freya Arjun Sofia")
_LAST = _words(
    "Rivera Chen Okafor Novak Haddad Larsen Moreau Tanaka Silva Brooks Kowalski Ortiz Nguyen "
    "Fischer Abara Costa Lindqvist Mensah Rossi Park Duarte Weiss Ibrahim Flores")
_ADJ = _words(
    "Midnight Golden Quiet Velvet Neon Wandering Little Crimson Northern Electric Hidden Cozy Wild "
    "Lucky Paper Solar Rainy Copper Silver Sunday")
_ROMAN = ("", "", " II", " III", " IV", " V", " VI", " VII", " VIII", " IX", " X")
_DESCRIPTIONS = (
    "{name} makes {plural} about {t0} and {t1}.",
    "Weekly {plural} on {t0}, {t1} and everything in between, by {name}.",
    "Support {name} for early access to {plural} on {t0} and {t1}.",
    "{name}: {plural} for fans of {t0} and {t1}.",
)
_COUNTRIES = _words("US GB CA DE FR AU BR MX JP ES IT NL SE IN PL KR PH ID AR IE")
_COUNTRY_SHARE = (35, 8, 6, 6, 5, 4, 5, 3, 4, 3, 3, 2, 2, 4, 2, 2, 2, 2, 1, 1)
_AGES = ("age_bucket=18-24", "age_bucket=25-34", "age_bucket=35-44", "age_bucket=45-54",
         "age_bucket=55+")
_AGE_SHARE = (0.30, 0.36, 0.18, 0.10, 0.06)
_PLANS = ("plan=web", "plan=ios", "plan=android")
_PLAN_SHARE = (0.45, 0.3, 0.25)
# Share of each event type that goes to one of the fan's favourites: memberships mostly do, and
# unfollows and cancels always do (you leave what you joined), so they point at familiar creators.
_FAVOURITE_SHARE = {"view": 0.75, "like": 0.75, "follow": 0.85, "free_membership": 0.85,
                    "paid_membership": 0.9, "purchase": 0.8, "unfollow": 1.0, "cancel": 1.0}
# fmt: on


@dataclass
class SyntheticSource(Source):
    """A deterministic, streaming simulation of a creator platform (see the module docstring)."""

    name: str = "synthetic"
    num_events: int = 1_000_000
    num_users: int = 20_000
    num_creators: int = 2_000
    seed: int = 0
    start: str = "2024-01-01"
    days: int = 365
    batch_size: int = 1_000_000
    popularity_exponent: float = 1.1  # Zipf exponent of creator popularity
    communities_per_category: int = 4
    community_affinity: float = 0.8  # share of in-category events inside the fan's community
    explore_share: float = 0.06  # share of events in a random category
    secondary_share: float = 0.15  # weight of the secondary category at the start ...
    drift_strength: float = 0.25  # ... grows by this much over the period
    tertiary_share: float = 0.1
    favorites_per_category: int = 4
    event_mix: tuple[float, ...] = (0.62, 0.07, 0.04, 0.03, 0.03, 0.18, 0.015, 0.015)
    tier_prices: tuple[float, ...] = (3.0, 5.0, 10.0, 25.0)
    tier_shares: tuple[float, ...] = (0.45, 0.3, 0.17, 0.08)
    _world: _World | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.has_timestamps, self.has_given_split = True, False
        self.estimated_rows = self.num_events
        if min(self.num_users, self.num_creators, self.days, self.batch_size) < 1:
            raise ValueError("num_users, num_creators, days and batch_size must be positive")
        if self.num_events < 0 or len(self.event_mix) != len(EVENT_TYPES):
            raise ValueError("num_events must be >= 0 and event_mix needs one weight per type")
        if not (1 <= self.favorites_per_category <= 16 and self.communities_per_category >= 1):
            raise ValueError("favorites_per_category must be 1..16, communities_per_category >= 1")

    def describe(self) -> dict:
        """Kind and every generation parameter, for the manifest."""
        params = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for skip in ("_world", "rejects", "has_timestamps", "has_given_split", "estimated_rows"):
            params.pop(skip)
        return {
            "kind": "synthetic",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
        }

    @property
    def world(self) -> _World:
        """The latent entities (built once, lazily): ground truth for tests and diagnostics."""
        if self._world is None:
            self._world = _World.build(self)
        return self._world

    def creators(self) -> pa.Table:
        """The creator catalog, in creation order (ids count up with created_at)."""
        w = self.world
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _TEXT_STREAM]))
        names, descriptions = _creator_texts(rng, w.creator_cat, w.creator_tags)
        columns = [
            _strings(w.creator_chars),
            pa.array(names),
            pa.array(_NAMES).take(pa.array(w.creator_cat)),
            w.creator_tags,
            pa.array(descriptions),
            pa.array(w.created_ms, TIMESTAMP),
        ]
        return pa.Table.from_arrays(columns, schema=CREATORS)

    def users(self) -> pa.Table:
        """User attributes, in signup order (ids count up with signup_at)."""
        w, n = self.world, self.num_users
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _PROFILE_STREAM]))
        country = rng.choice(len(_COUNTRIES), n, p=_normalised(_COUNTRY_SHARE))
        attr = np.empty(2 * n, np.int64)  # alternating age bucket, plan: two per user
        attr[0::2] = rng.choice(len(_AGES), n, p=_normalised(_AGE_SHARE))
        attr[1::2] = len(_AGES) + rng.choice(len(_PLANS), n, p=_normalised(_PLAN_SHARE))
        attributes = pa.ListArray.from_arrays(
            pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
            pa.array(_AGES + _PLANS).take(pa.array(attr)),
        )
        columns = [
            _strings(w.user_chars),
            pa.array(w.signup_ms, TIMESTAMP),
            pa.array(_COUNTRIES).take(pa.array(country)),
            attributes,
        ]
        return pa.Table.from_arrays(columns, schema=USERS)

    def interactions(self) -> Iterator[pa.RecordBatch]:
        """Exactly `num_events` rows in time-sliced batches, with `_row` numbered 0..n-1."""
        w = self.world
        for c, lo in enumerate(range(0, self.num_events, self.batch_size)):
            hi = min(lo + self.batch_size, self.num_events)
            # Slice the period in proportion to rows, so the event rate is even over time.
            t_lo = w.start_ms + (w.end_ms - w.start_ms) * lo // self.num_events
            t_hi = w.start_ms + (w.end_ms - w.start_ms) * hi // self.num_events
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, c]))
            yield with_row_numbers(w.batch(self, rng, hi - lo, t_lo, max(t_hi, t_lo + 1)), lo)


class _Index:
    """`np.searchsorted(a, x, side="right")` over a fixed nondecreasing array, but faster.

    Random-order binary searches miss the cache and the branch predictor at every level. A guide
    table of 4 buckets per element lands on the answer, or a step before it, almost always.
    """

    def __init__(self, a: np.ndarray) -> None:
        self.a = np.append(np.asarray(a, np.float64), np.inf)  # the sentinel ends every walk
        self.m = max(4 * len(a), 1024)
        self.lo = float(self.a[0])
        width = float(self.a[-2]) - self.lo
        self.scale = self.m / width if width > 0 else 0.0
        # Elements in an earlier bucket than x are < x, because rounding is monotone: counting
        # them with the very same bucket function makes the guide a lower bound, never past x.
        keys = self._bucket(self.a[:-1])
        self.guide = np.searchsorted(keys, np.arange(self.m + 2), side="left").astype(np.int32)

    def _bucket(self, x: np.ndarray) -> np.ndarray:
        b = ((x - self.lo) * self.scale).astype(np.int64)
        return np.clip(b, 0, self.m + 1, out=b)

    def right(self, x: np.ndarray) -> np.ndarray:
        """The number of elements <= x, for each x."""
        i = self.guide[self._bucket(x)]
        walk = np.flatnonzero(self.a[i] <= x)
        while walk.size:
            i[walk] += 1
            walk = walk[self.a[i[walk]] <= x[walk]]
        return i

    def pick(self, start: np.ndarray | int, end: np.ndarray | int, u: np.ndarray) -> np.ndarray:
        """Inverse-CDF draw in [start, end) with weights diff(a), for uniforms u; end > start."""
        lo = self.a[start]
        return np.minimum(self.right(lo + u * (self.a[end] - lo)) - 1, np.asarray(end) - 1)


@dataclass
class _World:
    """Per-entity arrays (sized by users/creators, never by events) and samplers over them."""

    origin_ms: int  # zero point of group keys: before any arrival
    span_ms: int  # longer than any arrival or event time after origin_ms
    start_ms: int
    end_ms: int
    event_types: _Index  # cumulative event mix
    user_chars: np.ndarray  # (users, width) id bytes; row i is user i's id
    signup_ms: np.ndarray  # sorted: user i signed up i-th
    signup: _Index
    activity: _Index  # cumulative activity, leading 0
    pref_group: np.ndarray  # (users, 3) community of the primary, secondary, tertiary category
    num_pref: np.ndarray
    creator_chars: np.ndarray
    created_ms: np.ndarray  # sorted: creator i was created i-th
    creator_cat: np.ndarray
    creator_group: np.ndarray  # category * communities + community
    creator_tags: pa.ListArray
    created: _Index
    popularity: _Index  # cumulative popularity in creation order, leading 0
    by_group: np.ndarray  # creator indices sorted by (group, created)
    group_keys: _Index  # group * span + created - origin, along by_group
    group_pop: _Index  # cumulative popularity along by_group, leading 0
    group_start: np.ndarray  # (groups + 1) offsets into by_group
    hash_key: np.uint64

    @classmethod
    def build(cls, s: SyntheticSource) -> _World:
        start_ms, end_ms, origin, span = _period(s)
        k = s.communities_per_category
        groups = len(_CATEGORIES) * k
        if groups * span >= 2**53:  # keys must stay exact in float64
            raise ValueError("too many communities for the simulated period")
        rng = np.random.default_rng(np.random.SeedSequence([s.seed, _CREATOR_STREAM]))
        created, cat, group, pop = _creators(s, rng, start_ms, end_ms)
        by_group = np.argsort(group, kind="stable")  # creation order within each group
        urng = np.random.default_rng(np.random.SeedSequence([s.seed, _USER_STREAM]))
        signup, pref_group, num_pref, activity = _fans(s, urng, start_ms, end_ms)
        return cls(
            origin_ms=origin,
            span_ms=span,
            start_ms=start_ms,
            end_ms=end_ms,
            event_types=_Index(_cum(_normalised(s.event_mix))),
            user_chars=_id_chars("fan_", s.num_users, 8),
            signup_ms=signup,
            signup=_Index(signup),
            activity=_Index(_cum(activity)),
            pref_group=pref_group,
            num_pref=num_pref,
            creator_chars=_id_chars("cr_", s.num_creators, 7),
            created_ms=created,
            creator_cat=cat,
            creator_group=group,
            creator_tags=_tags(rng, cat),  # rng's draws after _creators': their order is the data
            created=_Index(created),
            popularity=_Index(_cum(pop)),
            by_group=by_group,
            group_keys=_Index(group[by_group] * span + (created[by_group] - origin)),
            group_pop=_Index(_cum(pop[by_group])),
            group_start=np.searchsorted(group[by_group], np.arange(groups + 1)),
            hash_key=np.uint64(rng.integers(0, 2**63)),
        )

    def batch(
        self, s: SyntheticSource, rng: np.random.Generator, n: int, t_lo: int, t_hi: int
    ) -> pa.RecordBatch:
        """`n` events with timestamps in [t_lo, t_hi), drawn from `rng` only."""
        t = np.sort(rng.integers(t_lo, t_hi, n))
        user, creator = np.empty(n, np.int64), np.empty(n, np.int64)
        etype = np.empty(n, np.int64)
        # Chunks small enough that every temporary stays in cache: about twice as fast.
        for lo in range(0, n, _CHUNK):
            part = slice(lo, min(lo + _CHUNK, n))
            user[part], creator[part], etype[part] = self._events(s, rng, t[part])
        columns = [
            _strings(self.user_chars, user),
            _strings(self.creator_chars, creator),
            pa.array(EVENT_TYPES).take(pa.array(etype)),
            pa.array(t, TIMESTAMP),
            pa.array(_values(s, rng, etype)),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=INTERACTIONS)

    def _events(
        self, s: SyntheticSource, rng: np.random.Generator, t: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """User, creator and event type of events at times t."""
        n = t.size
        tf = t.astype(np.float64)
        user = self._users(rng, t, tf)
        etype = self.event_types.pick(0, len(EVENT_TYPES), rng.random(n))
        frac = ((tf - self.start_ms) / (self.end_ms - self.start_ms)).astype(np.float32)
        leaving = etype >= EVENT_CODE["unfollow"]
        slot, group, stray = self._communities(s, rng, user, frac, leaving)
        creator = self._creators(s, rng, user, slot, etype, group, stray, t, tf)
        return user, creator, etype

    def _users(self, rng: np.random.Generator, t: np.ndarray, tf: np.ndarray) -> np.ndarray:
        """Activity-weighted users who had signed up by each event's time."""
        # Draw among everyone signed up by the last event; the few who joined after their own
        # event's time are drawn again exactly. The mix is exactly the eligible distribution.
        pool = int(np.searchsorted(self.signup_ms, t.max(), side="right"))
        user = self.activity.pick(0, pool, rng.random(t.size))
        late = np.flatnonzero(self.signup_ms[user] > t)
        user[late] = self.activity.pick(0, self.signup.right(tf[late]), rng.random(late.size))
        return user

    def _communities(
        self,
        s: SyntheticSource,
        rng: np.random.Generator,
        user: np.ndarray,
        frac: np.ndarray,
        leaving: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per event: the fan's category slot (-1: exploring), the community, and whether that
        community is not the fan's own. The secondary category gains weight over time (drift).
        Unfollows and cancels never stray: they concern creators the fan already knows.
        """
        k, share = s.communities_per_category, np.float32
        r = rng.random(user.size, dtype=np.float32) - share(s.explore_share)
        num = self.num_pref[user]
        secondary = (num >= 2) * (share(s.secondary_share) + share(s.drift_strength) * frac)
        upto_third = r < secondary + (num >= 3) * share(s.tertiary_share)
        slot = upto_third * np.int8(2) - (r < secondary)
        slot[r < 0] = 0
        explore = (r < 0) & ~leaving
        slot[explore] = -1
        group = self.pref_group.ravel()[user * 3 + np.maximum(slot, 0)]
        stray = rng.random(user.size, dtype=np.float32) >= share(s.community_affinity)
        stray = (stray & ~leaving) | explore
        idx = np.flatnonzero(stray)
        g = group[idx]
        group[idx] = g - g % k + rng.integers(0, k, idx.size, dtype=np.int32)
        idx = np.flatnonzero(explore)
        cat = rng.choice(len(_CATEGORIES), idx.size, p=_normalised(_CAT_SHARE))
        group[idx] = cat * k + group[idx] % k
        return slot, group, stray

    def _creators(
        self,
        s: SyntheticSource,
        rng: np.random.Generator,
        user: np.ndarray,
        slot: np.ndarray,
        etype: np.ndarray,
        group: np.ndarray,
        stray: np.ndarray,
        t: np.ndarray,
        tf: np.ndarray,
    ) -> np.ndarray:
        """A favourite of the fan in the event's community, or a popular creator there."""
        u = rng.random(t.size)
        fav_share = np.array([_FAVOURITE_SHARE[e] for e in EVENT_TYPES], np.float32)
        fav = np.flatnonzero(~stray & (rng.random(t.size, dtype=np.float32) < fav_share[etype]))
        j = (s.favorites_per_category * rng.random(fav.size) ** 2).astype(np.uint64)
        u[fav] = self._hash(user[fav], slot[fav], j)
        creator = self._in_group(group, self.group_start[group + 1], u)
        # Draws of creators that do not exist yet at t are redrawn among those that do; as with
        # users, the mix is exactly the popularity distribution over the existing ones.
        late = np.flatnonzero((creator < 0) | (self.created_ms[creator] > t))
        g = group[late]
        end = self.group_keys.right(g * float(self.span_ms) + (tf[late] - self.origin_ms))
        creator[late] = self._in_group(g, end, rng.random(late.size))
        lost = np.flatnonzero(creator < 0)  # community still empty at t: anyone who exists
        old = self.created.right(tf[lost])
        creator[lost] = self.popularity.pick(0, old, rng.random(lost.size))
        return creator

    def _in_group(self, group: np.ndarray, end: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Popularity-weighted creator among by_group[start(group):end], or -1 if that is empty."""
        start = self.group_start[group]
        return np.where(end > start, self.by_group[self.group_pop.pick(start, end, u)], -1)

    def _hash(self, user: np.ndarray, slot: np.ndarray, j: np.ndarray) -> np.ndarray:
        """A fixed uniform per (user, slot, favourite #): favourites need no per-user storage."""
        z = (user.astype(np.uint64) << np.uint64(8)) + (slot.astype(np.uint64) << np.uint64(4)) + j
        z = z + self.hash_key + np.uint64(0x9E3779B97F4A7C15)  # splitmix64 finaliser
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _period(s: SyntheticSource) -> tuple[int, int, int, int]:
    """The simulated period in ms (start, end) and the key space's origin and span: three years
    before the start, where the pre-existing creators and fans arrive."""
    start = datetime.fromisoformat(s.start)
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start
    start_ms = int(start.timestamp() * 1000)
    end_ms = start_ms + s.days * DAY_MS
    return start_ms, end_ms, start_ms - 3 * 365 * DAY_MS, end_ms - start_ms + 3 * 365 * DAY_MS + 1


def _creators(s: SyntheticSource, rng: np.random.Generator, start_ms: int, end_ms: int):
    """Each creator's arrival, category, community and popularity, in order of arrival (the
    draws from `rng` in a fixed order: the same seed gives the same catalog)."""
    k = s.communities_per_category
    created = _arrivals(rng, s.num_creators, start_ms, end_ms, pre_share=0.6, pre_days=3 * 365)
    cat = rng.choice(len(_CATEGORIES), s.num_creators, p=_normalised(_CAT_SHARE))
    group = cat * k + rng.integers(0, k, s.num_creators)
    pop = (rng.permutation(s.num_creators) + 1.0) ** -s.popularity_exponent
    # Every community needs someone to follow on day one: its founder predates the start.
    by_arrival = np.lexsort((created, group))
    founders = by_arrival[np.unique(group[by_arrival], return_index=True)[1]]
    created[founders] = np.minimum(created[founders], start_ms - DAY_MS)
    order = np.argsort(created, kind="stable")
    return created[order], cat[order], group[order], pop[order]


def _fans(s: SyntheticSource, urng: np.random.Generator, start_ms: int, end_ms: int):
    """Each fan's signup, preferred communities (and how many), and activity weight."""
    signup = _arrivals(urng, s.num_users, start_ms, end_ms, pre_share=0.5, pre_days=2 * 365)
    pref_cat, num_pref = _preferences(urng, s.num_users)
    pref_comm = urng.integers(0, s.communities_per_category, (s.num_users, 3))
    pref_group = (pref_cat * s.communities_per_category + pref_comm).astype(np.int32)
    return signup, pref_group, num_pref, urng.lognormal(0.0, 1.0, s.num_users)


def _values(s: SyntheticSource, rng: np.random.Generator, etype: np.ndarray) -> np.ndarray:
    """Tier price for paid memberships, a lognormal amount for purchases, 1.0 otherwise."""
    value = np.ones(etype.size, np.float32)
    paid = np.flatnonzero(etype == EVENT_CODE["paid_membership"])
    tiers = rng.choice(len(s.tier_prices), paid.size, p=_normalised(s.tier_shares))
    value[paid] = np.asarray(s.tier_prices, np.float32)[tiers]
    bought = np.flatnonzero(etype == EVENT_CODE["purchase"])
    value[bought] = np.maximum(np.round(rng.lognormal(np.log(12.0), 0.8, bought.size), 2), 1.0)
    return value


def _preferences(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """1-3 distinct preferred categories per user; unused slots repeat the primary one."""
    share = _normalised(_CAT_SHARE)
    cats = np.empty((n, 3), np.int8)
    for slot in range(3):
        draw = rng.choice(len(share), n, p=share)
        while (clash := np.flatnonzero((draw[:, None] == cats[:, :slot]).any(axis=1))).size:
            draw[clash] = rng.choice(len(share), clash.size, p=share)
        cats[:, slot] = draw
    num = rng.choice(3, n, p=[0.3, 0.45, 0.25]).astype(np.int8) + 1
    cats[num < 2, 1] = cats[num < 2, 0]
    cats[num < 3, 2] = cats[num < 3, 0]
    return cats, num


def _arrivals(
    rng: np.random.Generator, n: int, start_ms: int, end_ms: int, pre_share: float, pre_days: int
) -> np.ndarray:
    """Sorted arrival times: `pre_share` before the start, the rest spread over the period."""
    before = rng.random(n) < pre_share
    before[0] = True  # someone is always there on day one
    t = np.where(
        before,
        rng.integers(start_ms - pre_days * DAY_MS, start_ms, n),
        rng.integers(start_ms, end_ms, n),
    )
    return np.sort(t)


def _id_chars(prefix: str, n: int, width: int) -> np.ndarray:
    """Ids `prefix` + zero-padded number as an (n, length) byte matrix, without Python strings."""
    width = max(width, len(str(n - 1)))
    chars = np.empty((n, len(prefix) + width), np.uint8)
    chars[:, : len(prefix)] = np.frombuffer(prefix.encode(), np.uint8)
    num = np.arange(n, dtype=np.int64)
    for col in range(chars.shape[1] - 1, len(prefix) - 1, -1):
        chars[:, col] = ord("0") + num % 10
        num //= 10
    return chars


def _strings(chars: np.ndarray, rows: np.ndarray | None = None) -> pa.Array:
    """A string array of the (selected) rows of a fixed-width id byte matrix: one gather."""
    size = chars.shape[1]
    fixed = chars.view(f"S{size}")[:, 0]  # gathering whole rows as one item is ~3x faster
    data = fixed if rows is None else fixed[rows]
    offsets = np.arange(0, (data.size + 1) * size, size, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), data.size, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _tags(rng: np.random.Generator, cat: np.ndarray) -> pa.ListArray:
    """2-5 distinct tags from the creator's category, plus a cross-category tag for some."""
    vocab = len(_TAG_VOCAB[0])
    own = np.argsort(rng.random((cat.size, vocab)), axis=1)[:, :5] + cat[:, None] * vocab
    other = (cat + rng.integers(1, len(_CATEGORIES), cat.size)) % len(_CATEGORIES)
    cross = other * vocab + rng.integers(0, vocab, cat.size)
    ids = np.concatenate([own, cross[:, None]], axis=1)
    keep = np.arange(6) < rng.integers(2, 6, cat.size)[:, None]
    keep[:, 5] = rng.random(cat.size) < 0.15
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    flat = pa.array([t for tags in _TAG_VOCAB for t in tags]).take(pa.array(ids[keep]))
    return pa.ListArray.from_arrays(pa.array(offsets), flat)


def _creator_texts(
    rng: np.random.Generator, cat: np.ndarray, tags: pa.ListArray
) -> tuple[list[str], list[str]]:
    """Readable names from word lists (duplicates get a numeral) and a one-line description."""
    n = cat.size
    pattern, first = rng.integers(0, 4, n), rng.integers(0, len(_FIRST), n)
    last = rng.integers(0, len(_LAST), n)
    adj, word, verb, tmpl = (rng.integers(0, 99, n) for _ in range(4))
    seen: dict[str, int] = {}
    names, descriptions = [], []
    for i, (c, tag_list) in enumerate(zip(cat.tolist(), tags.to_pylist(), strict=True)):
        nouns, suffixes, verbs = (words[c].split("|") for words in (_NOUNS, _SUFFIXES, _VERBS))
        noun, suffix = nouns[word[i] % len(nouns)], suffixes[verb[i] % len(suffixes)]
        person, adjective = _FIRST[first[i]], _ADJ[adj[i] % len(_ADJ)]
        owner = person + ("'" if person.endswith("s") else "'s")
        name = (
            f"{person} {_LAST[last[i]]} {verbs[verb[i] % len(verbs)]}",
            f"The {adjective} {noun} {suffix}",
            f"{owner} {noun} {suffix}",
            f"{adjective} {noun} {suffix}",
        )[pattern[i]]
        seen[name] = count = seen.get(name, 0) + 1
        name += _ROMAN[count] if count < len(_ROMAN) else f" {count}"
        names.append(name)
        descriptions.append(
            _DESCRIPTIONS[tmpl[i] % len(_DESCRIPTIONS)].format(
                name=name, plural=_PLURAL[c], t0=tag_list[0], t1=tag_list[1]
            )
        )
    return names, descriptions


def _cum(weights: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(weights, dtype=np.float64)])


def _normalised(weights: tuple[float, ...] | list[float]) -> np.ndarray:
    w = np.asarray(weights, np.float64)
    return w / w.sum()
