"""`python -m data prepare`: raw source → validated, split, featurised, sharded training data.

Three passes, so memory holds one bucket of users at a time, never the whole log:

1. stream: validate each batch (quarantining bad rows), encode ids with the stable vocabularies,
   and spill compact integer events to `buckets` files by user;
2. per bucket: drop exact duplicates, collapse positives into (user, creator) pairs, split them,
   build each example's history from train pairs only, and deal examples round-robin to shards;
3. per shard: shuffle, pad to equal record counts, write the webdataset tar.

Everything lands in a staging folder, every file by temp + rename, and the folder is swapped in
at the end: a crash leaves the previous dataset whole.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from common.artifacts import MANIFEST
from common.io import ParquetAppender, publish_dir, write_parquet
from data import features, manifest, records, sources, tables
from data.config import PrepareConfig
from data.features import NO_TIME
from data.schema import (
    CREATORS,
    EVENT_TYPES,
    QUARANTINE,
    SOURCE_ROW_COLUMN,
    SPLIT_COLUMN,
    USERS,
)
from data.shards import SHARD_PATTERN, records_per_shard, write_shard
from data.text import write_text_features
from data.validate import as_quarantine, contiguous, rejects_table, validate
from data.vocab import Vocab

VOCABS = ("users", "creators", "categories", "tags")


class ReconcileError(RuntimeError):
    """Input rows != accepted + quarantined: a bug, never silently written."""


def prepare(cfg: PrepareConfig, progress: bool = True) -> Path:
    """Run the whole prepare job; return the published output folder."""
    with _small_pages():
        return _prepare(cfg, progress)


@contextlib.contextmanager
def _small_pages():
    """Prepare churns through short-lived arrays of hundreds of MB; faulting them in as
    transparent huge pages cost about 13% more CPU (measured on 10 M events). numpy's switch is
    process-wide, so it is restored afterwards."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # another numpy layout: keep its default
        yield
        return
    previous = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(previous)


def _prepare(cfg: PrepareConfig, progress: bool) -> Path:
    out = Path(cfg.output or f"artifacts/data/{cfg.name}")
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "tmp").mkdir(parents=True)
    try:
        job = _Job(cfg, staging, progress)
        job.run(previous=Path(cfg.vocab_from) if cfg.vocab_from else out)
        shutil.rmtree(staging / "tmp")
        manifest.write(staging, job.manifest())
        publish_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


class _Job:
    def __init__(self, cfg: PrepareConfig, staging: Path, progress: bool):
        self.cfg = cfg
        self.dir = staging
        self.progress = progress
        self.source = sources.build(cfg.source)
        self.now_ms = _reference_ms(cfg.reference_time)
        self.counts: Counter = Counter()
        self.timings: dict[str, float] = {}
        self.text_info: dict | None = None
        positive = cfg.events.positive
        self.event_weight = np.array([positive.get(e, 0.0) for e in EVENT_TYPES], np.float32)
        self.is_positive = np.array([e in positive for e in EVENT_TYPES])
        self.quarantine = ParquetAppender(staging / tables.QUARANTINE, QUARANTINE)

    # -- orchestration ------------------------------------------------------------------------

    def run(self, previous: Path) -> None:
        old_vocab = previous if (previous / tables.VOCAB).exists() else None
        self.previous = previous if (previous / MANIFEST).exists() else None
        self.vocab = {name: Vocab.load_or_new(name, old_vocab) for name in VOCABS}
        self.previous_sizes = {k: len(v) for k, v in self.vocab.items()} if old_vocab else None
        for phase, step in (
            ("catalogs", self._catalogs),
            ("stream", self._stream),
            ("buckets", self._buckets),
            ("shards", self._shards),
            ("tables", self._tables),
            ("text", self._text),
        ):
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            self.timings[f"{phase}_s"] = time.perf_counter() - wall
            self.timings[f"{phase}_cpu_s"] = time.process_time() - cpu
        self.quarantine.close()
        self._reconcile()
        self.timings["total_s"] = sum(
            v for k, v in self.timings.items() if k.endswith("_s") and not k.endswith("cpu_s")
        )
        self.timings["total_cpu_s"] = sum(
            v for k, v in self.timings.items() if k.endswith("_cpu_s")
        )

    # -- pass 0: catalogs ---------------------------------------------------------------------

    def _catalogs(self) -> None:
        creators = self._validated("creators", self.source.creators(), key="creator_id")
        users = self._validated("users", self.source.users(), key="user_id")
        self.creators = creators
        self.users = users
        if creators is not None:
            self.vocab["creators"].extend(creators.column("creator_id").combine_chunks())
            self.vocab["categories"].extend(creators.column("category").combine_chunks())
            self.vocab["tags"].extend(pc.list_flatten(creators.column("tags")).combine_chunks())
        if users is not None:
            self.vocab["users"].extend(users.column("user_id").combine_chunks())

    def _validated(self, table: str, data: pa.Table | None, key: str) -> pa.Table | None:
        """Validate a catalog table; later copies of an id are quarantined as duplicates."""
        self._source_rejects()
        if data is None:
            return None
        if SOURCE_ROW_COLUMN not in data.column_names:
            data = data.append_column(SOURCE_ROW_COLUMN, pa.array(np.arange(len(data))))
        result = validate(data, table, now_ms=self.now_ms, timestamps_required=False)
        self.counts[f"{table}_in"] += len(data)
        self._quarantine(result.quarantined)
        accepted = result.accepted
        first = pa.array(first_occurrence(accepted.column(key)))
        dupes = accepted.filter(pc.invert(first))
        if len(dupes):
            self._quarantine(as_quarantine(dupes, table, "duplicate", f"{key} seen earlier"))
        accepted = accepted.filter(first)
        self.counts[f"{table}_accepted"] += len(accepted)
        return accepted

    def _spill_dir(self, name: str) -> Path | None:
        """Where a pass spills: memory when the source is small enough, else a temp folder."""
        rows = self.source.estimated_rows
        if rows is not None and rows <= self.cfg.spill_above_rows:
            return None
        return self.dir / "tmp" / name

    # -- pass 1: stream -----------------------------------------------------------------------

    def _stream(self) -> None:
        cfg = self.cfg
        self.bucket_spill = records.Spill(self._spill_dir("buckets"), records.EVENTS, cfg.buckets)
        self.time_sample: list[np.ndarray] = []
        stride = max(1, (self.source.estimated_rows or 0) // 4_000_000)
        bar = tqdm(total=self.source.estimated_rows, unit="ev", unit_scale=True,
                   desc="validate+encode", disable=not self.progress)  # fmt: skip
        for batch in records.chunks(self.source.interactions(), cfg.chunk_rows):
            spill = self._encode(self._accepted_rows(batch))
            pos_ts = spill.column("ts").to_numpy()[self.is_positive[spill.column("event")]]
            self.time_sample.append(pos_ts[::stride].copy())
            self._spill_by_bucket(spill)
            bar.update(batch.num_rows)
        bar.close()
        self._source_rejects()

    def _accepted_rows(self, batch: pa.Table) -> pa.Table:
        """A chunk of raw interactions validated: the rows that fail quarantined with their
        reason (after any the source itself rejected so far), the rest returned."""
        self._source_rejects()
        self.counts["interactions_in"] += batch.num_rows
        result = validate(
            batch,
            "interactions",
            now_ms=self.now_ms,
            timestamps_required=self.source.has_timestamps,
            vocab={"user_id": self.vocab["users"], "creator_id": self.vocab["creators"]},
            closed=("creator_id",) if self.creators is not None else (),  # catalog given
        )
        self._quarantine(result.quarantined)
        return result.accepted

    def _spill_by_bucket(self, spill: pa.RecordBatch) -> None:
        """Each event to its user's bucket (user mod buckets): the second pass reads a bucket
        at a time, every event of a user together."""
        buckets = self.cfg.buckets
        # uint16 keys make numpy's stable argsort a linear-time radix sort.
        bucket = (spill.column("user").to_numpy() % buckets).astype(np.uint16)
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
        ordered = spill.take(pa.array(order))
        for b in range(buckets):
            if bounds[b + 1] > bounds[b]:
                self.bucket_spill.write(b, ordered.slice(bounds[b], bounds[b + 1] - bounds[b]))

    def _encode(self, accepted: pa.Table) -> pa.RecordBatch:
        user = self.vocab["users"].assign(
            accepted.column("user_id"), accepted.column("_user_id_idx").to_numpy()
        )
        creator = self.vocab["creators"].assign(
            accepted.column("creator_id"), accepted.column("_creator_id_idx").to_numpy()
        )
        event = contiguous(accepted.column("event_type")).indices  # int8 codes from validate
        ts = pc.cast(accepted.column("timestamp").cast(pa.timestamp("ms")), pa.int64())
        if SPLIT_COLUMN in accepted.column_names:
            split = pc.index_in(
                accepted.column(SPLIT_COLUMN), value_set=pa.array(["train", "test"])
            )
            split = contiguous(pc.cast(pc.fill_null(split, -1), pa.int8()))
        else:
            split = pa.array(np.full(len(accepted), -1, np.int8))
        return pa.record_batch(
            [
                contiguous(accepted.column(SOURCE_ROW_COLUMN)),
                pa.array(user),
                pa.array(creator),
                event,
                contiguous(pc.fill_null(ts, NO_TIME)),
                contiguous(accepted.column("value")),
                split,
            ],
            schema=records.EVENTS,
        )

    # -- pass 2: buckets ----------------------------------------------------------------------

    def _buckets(self) -> None:
        cfg = self.cfg
        self.cut_ms, self.validation_cut_ms = self._time_cut()
        n_shards = cfg.shards.num_shards
        example_schema = records.example_schema(cfg.features.history_length)
        self.shard_spill = records.Spill(self._spill_dir("shards"), example_schema, n_shards)
        self.shard_counts = np.zeros(n_shards, dtype=np.int64)
        self._start_tallies()
        out = {name: ParquetAppender(self.dir / name, records.PAIRS)
               for name in (tables.TRAIN, tables.TEST, tables.VALIDATION)}  # fmt: skip
        offset = 0
        for b in tqdm(range(cfg.buckets), desc="split+features", disable=not self.progress):
            train, validation, test, examples = self._bucket(b)
            for name, pairs in ((tables.TRAIN, train), (tables.TEST, test),
                                (tables.VALIDATION, validation)):  # fmt: skip
                out[name].write(records.pairs_table(pairs))
            self._deal(examples, offset, example_schema)
            offset += len(examples["user"])
        for appender in out.values():
            appender.close()

    def _start_tallies(self) -> None:
        """Zeroed per-user and per-creator figures that each bucket adds to (_tally)."""
        n_users = len(self.vocab["users"])
        self.user_history = np.zeros((n_users, self.cfg.features.user_history), np.int32)
        self.user_train = np.zeros(n_users, dtype=np.int32)
        self.user_test = np.zeros(n_users, dtype=np.int32)
        self.user_validation = np.zeros(n_users, dtype=np.int32)
        self.creator_train = np.zeros(len(self.vocab["creators"]), dtype=np.int64)

    def _deal(self, examples: dict, offset: int, example_schema: pa.Schema) -> None:
        """A bucket's training examples to the shard spills. Dealt round-robin in (user, time)
        order, so each user's examples spread over all shards; every shard is shuffled as a
        whole when it is written. `offset`: examples dealt before this bucket."""
        n, n_shards = len(examples["user"]), self.cfg.shards.num_shards
        for s in range(n_shards):
            take = slice((s - offset) % n_shards, None, n_shards)
            count = len(range(n)[take])
            if count:
                self.shard_spill.write(s, records.example_batch(examples, take, example_schema))
                self.shard_counts[s] += count

    def _bucket(self, b: int):
        cfg = self.cfg
        cols = self._accepted(b)
        train, validation, test = self._split(cols)
        temporal = cfg.split.kind == "time"
        train = features.sort_for_history(train, temporal, cfg.split.seed)
        hist = features.histories(train.user, train.creator, cfg.features.history_length, temporal)
        self._tally(train, validation, test)
        examples = {
            "user": train.user,
            "creator": train.creator,
            "history": hist,
            "weight": train.weight,
            "ts": train.ts,
        }
        return train, validation, test, examples

    def _accepted(self, b: int) -> dict[str, np.ndarray]:
        """Bucket b's events as columns, duplicates quarantined, the rest counted by type."""
        t = self.bucket_spill.read(b)
        cols = {name: t.column(name).to_numpy() for name in records.EVENTS.names}
        dup, first_row = features.find_duplicates(
            cols["user"], cols["creator"], cols["event"], cols["ts"], cols["value"], cols["row"]
        )
        if dup.any():
            self._quarantine(self._duplicates(cols, dup, first_row))
            cols = {k: v[~dup] for k, v in cols.items()}
        self.counts["interactions_accepted"] += len(cols["row"])
        per_type = np.bincount(cols["event"], minlength=len(EVENT_TYPES))
        for code in np.flatnonzero(per_type):
            self.counts[f"events_{EVENT_TYPES[code]}"] += int(per_type[code])
        return cols

    def _split(self, cols: dict[str, np.ndarray]):
        """(train, validation, test) pairs of the bucket's positive events, by the split's rule;
        a pair known on an earlier side is not a later side's."""
        cfg = self.cfg
        pos = self.is_positive[cols["event"]]
        if cfg.events.min_value is not None:
            pos &= cols["value"] >= cfg.events.min_value
        side = self._event_side(cols)
        # Each side's pairs from that side's events only: a train pair's time and weight must
        # not reflect anything after the cut (a follow before it, a paid membership after).
        train, test, validation = (self._pairs(cols, pos & (side == s)) for s in SIDES)
        validation = validation.select(~features.contains(train.key, validation.key))
        known = features.contains(train.key, test.key) | features.contains(validation.key, test.key)
        test = test.select(~known)  # known before the cut: neither train nor validation
        if cfg.split.kind == "per_user":
            train, test = self._held_out(train, cfg.split.test_fraction, cfg.split.seed)
        if cfg.split.kind != "time" and cfg.split.validation_fraction > 0:
            seed = cfg.split.seed + VALIDATION_SEED
            train, validation = self._held_out(train, cfg.split.validation_fraction, seed)
        return train, validation, test

    def _tally(self, train: features.Pairs, validation: features.Pairs, test: features.Pairs):
        """The per-user and per-creator figures the tables and manifest need from the bucket:
        each user's last training creators and pair counts, each creator's training pairs."""
        users, last, n_train = features.last_n_per_user(
            train.user, train.creator, self.cfg.features.user_history
        )
        self.user_history[users] = last
        self.user_train[users] = n_train
        self.user_test += np.bincount(test.user, minlength=len(self.user_test)).astype(np.int32)
        self.user_validation += np.bincount(
            validation.user, minlength=len(self.user_validation)
        ).astype(np.int32)
        self.creator_train += np.bincount(train.creator, minlength=len(self.creator_train))

    def _held_out(self, pairs: features.Pairs, fraction: float, seed: int):
        """(kept, held out): a seeded `fraction` of each user's pairs held out (per_user)."""
        held = features.per_user_split(pairs, fraction, self.cfg.split.min_train_per_user, seed)
        return pairs.select(held == 0), pairs.select(held == 1)

    def _pairs(self, cols, mask: np.ndarray) -> features.Pairs:
        return features.positive_pairs(
            cols["user"][mask],
            cols["creator"][mask],
            cols["ts"][mask],
            self.event_weight[cols["event"][mask]],
        )

    def _event_side(self, cols) -> np.ndarray:
        kind = self.cfg.split.kind
        if kind == "time":  # train before the validation cut, validation up to the test cut
            side = (cols["ts"] >= self.cut_ms).astype(np.int8)
            side[(cols["ts"] >= self.validation_cut_ms) & (side == 0)] = SIDES[2]
            return side
        if kind == "given":
            if (cols["split"] < 0).any():
                raise ValueError(
                    "split.kind=given but the source has rows without a train/test "
                    "split; use split.kind=time or per_user"
                )
            return cols["split"]
        return np.zeros(len(cols["row"]), dtype=np.int8)  # per_user: decided on pairs

    def _time_cut(self) -> tuple[int | None, int | None]:
        """The test cut and the validation cut before it (equal without validation): the
        positive events' time quantiles (1 - test) and (1 - test)(1 - validation)."""
        if self.cfg.split.kind != "time":
            return None, None
        if not self.source.has_timestamps:
            raise ValueError(
                f"split.kind=time but source {self.source.name!r} has no timestamps; "
                "set split.kind=per_user"
            )
        sample = np.sort(np.concatenate(self.time_sample or [np.zeros(0, np.int64)]))
        if len(sample) == 0:
            raise ValueError("no positive events to split; check events.positive")
        q = 1.0 - self.cfg.split.test_fraction
        at = lambda q: int(sample[min(len(sample) - 1, int(q * len(sample)))])  # noqa: E731
        cut = at(q)
        if self.cfg.split.validation_fraction == 0:
            return cut, cut
        return cut, min(cut, at(q * (1.0 - self.cfg.split.validation_fraction)))

    def _duplicates(self, cols, dup, first_row) -> pa.Table:
        idx = np.flatnonzero(dup)
        users, creators = self.vocab["users"].ids, self.vocab["creators"].ids
        ts = cols["ts"][idx]
        raw = pa.table(
            {
                "user_id": users.take(pa.array(cols["user"][idx])),
                "creator_id": creators.take(pa.array(cols["creator"][idx])),
                "event_type": pa.array(EVENT_TYPES).take(pa.array(cols["event"][idx])),
                "timestamp": pa.array(np.where(ts == NO_TIME, None, ts), pa.timestamp("ms", "UTC")),
                "value": pa.array(cols["value"][idx]),
                SOURCE_ROW_COLUMN: pa.array(cols["row"][idx]),
            }
        )
        details = [f"duplicate of source row {r}" for r in first_row[idx]]
        return as_quarantine(raw, "interactions", "duplicate", details)

    # -- pass 3: shards and tables ------------------------------------------------------------

    def _shards(self) -> None:
        cfg = self.cfg.shards
        if self.shard_counts.sum() == 0:
            raise ValueError(
                "no training examples: every positive fell in test or was rejected; "
                "check events.positive and the quarantine summary"
            )
        self.n_records = records_per_shard(int(self.shard_counts.max()), cfg.record_size)
        self.padded = 0
        shard_dir = self.dir / tables.SHARDS
        shard_dir.mkdir()
        first = self.shard_spill.read(0, keep=True) if self.shard_counts.min() == 0 else None
        for s in tqdm(
            range(len(self.shard_counts)), desc="write shards", disable=not self.progress
        ):
            examples = records.examples_from_table(self.shard_spill.read(s))
            if len(examples["user"]) == 0:
                # Fewer examples than shards (a toy dataset): fill from the first shard, so every
                # rank still sees the same number of records.
                examples = records.examples_from_table(first)
                self.padded += len(examples["user"])  # all of this shard repeats shard 0
            self.padded += write_shard(
                shard_dir / SHARD_PATTERN.format(s),
                examples,
                self.n_records,
                cfg.record_size,
                seed=cfg.seed * 7919 + s,
            )

    def _tables(self) -> None:
        write_parquet(self.dir / tables.CREATORS, self._creator_table())
        write_parquet(self.dir / tables.USERS, self._user_table())
        for name, vocab in self.vocab.items():
            vocab.save(self.dir / tables.vocab_file(name))

    def _text(self) -> None:
        name = self.cfg.features.text_encoder
        if name:
            self.text_info = write_text_features(
                self.dir, name, self.previous, self.cfg.features.text_batch_size, self.progress
            )

    def _creator_table(self) -> pa.Table:
        vocab = self.vocab["creators"]
        n = len(vocab)
        table = pa.table(
            {"creator_idx": pa.array(np.arange(n, dtype=np.int32)), "creator_id": vocab.ids}
        )
        # A source without a catalog (a LightGCN folder of train.txt and test.txt) still gets
        # every catalog column, all null: readers see one table layout whatever the source.
        meta = _catalog_or_empty(self.creators, CREATORS)
        meta = meta.append_column(
            "category_idx", pa.array(self.vocab["categories"].lookup(meta.column("category")))
        )
        tags = meta.column("tags").combine_chunks()
        tags = pc.list_slice(tags, 0, self.cfg.features.max_tags)
        tag_idx = self.vocab["tags"].lookup(pc.list_flatten(tags))
        meta = meta.set_column(meta.schema.get_field_index("tags"), "tags", tags)
        offsets = pc.list_value_length(tags).fill_null(0).to_numpy()
        meta = meta.append_column(
            "tag_idx",
            pa.ListArray.from_arrays(
                pa.array(np.concatenate([[0], np.cumsum(offsets)]).astype(np.int32)),
                pa.array(tag_idx),
            ),
        )
        table = _align(table, meta, vocab.lookup(meta.column("creator_id")), "creator_id")
        counts = self.creator_train
        return table.append_column("train_count", pa.array(counts))

    def _user_table(self) -> pa.Table:
        vocab = self.vocab["users"]
        n, hist_len = self.user_history.shape
        table = pa.table(
            {
                "user_idx": pa.array(np.arange(n, dtype=np.int32)),
                "user_id": vocab.ids,
                "history": pa.FixedSizeListArray.from_arrays(
                    pa.array(self.user_history.ravel()), hist_len
                ),
                "train_count": pa.array(self.user_train),
                "test_count": pa.array(self.user_test),
            }
        )
        meta = _catalog_or_empty(self.users, USERS)
        return _align(table, meta, vocab.index_of(meta.column("user_id")), "user_id")

    # -- bookkeeping --------------------------------------------------------------------------

    def _source_rejects(self) -> None:
        """Rows the source could not split into fields: input rows of their table, quarantined."""
        rows = rejects_table(self.source.drain_rejects())
        for table in rows.column("table").to_pylist():
            self.counts[f"{table}_in"] += 1
        self._quarantine(rows)

    def _quarantine(self, rows: pa.Table) -> None:
        if rows.num_rows:
            self.quarantine.write(rows)
            for table, reason in zip(
                rows.column("table").to_pylist(), rows.column("reason").to_pylist(), strict=True
            ):
                self.counts[f"quarantined_{table}_{reason}"] += 1
                self.counts[f"{table}_quarantined"] += 1

    def _reconcile(self) -> None:
        c = self.counts
        for table in ("interactions", "creators", "users"):
            rows_in = c[f"{table}_in"]
            accepted, quarantined = c[f"{table}_accepted"], c[f"{table}_quarantined"]
            if rows_in != accepted + quarantined:
                raise ReconcileError(
                    f"{table}: {rows_in} rows in != {accepted} accepted + {quarantined} quarantined"
                )

    def manifest(self) -> dict:
        return manifest.build(self)


SIDES = (0, 1, 2)
"""An event's side: train, test, validation (carved out of train; split.validation_fraction)."""
VALIDATION_SEED = 2
"""The validation carve-out's hash seed offset: a draw of its own (the per-user test split
uses the seed, the history shuffle seed + 1)."""


def first_occurrence(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """True where a value appears for the first time. Dictionary encoding numbers values in
    order of first appearance, so a row is new exactly when its number exceeds all before it."""
    ids = pc.dictionary_encode(contiguous(values)).indices.to_numpy(zero_copy_only=False)
    if len(ids) == 0:
        return np.zeros(0, dtype=bool)
    return ids > np.maximum.accumulate(np.concatenate([[-1], ids[:-1]]))


def _catalog_or_empty(catalog: pa.Table | None, schema: pa.Schema) -> pa.Table:
    """A validated catalog without its source-row column, or an empty one of the schema."""
    if catalog is None:
        return schema.empty_table()
    return catalog.drop_columns([SOURCE_ROW_COLUMN])


def _align(table: pa.Table, meta: pa.Table, index: np.ndarray, key: str) -> pa.Table:
    """Append `meta`'s columns to `table` (one row per vocabulary index), row `index[i]` getting
    meta row i; indices without metadata get nulls."""
    position = np.full(table.num_rows, -1, dtype=np.int64)
    position[index] = np.arange(len(index))
    rows = meta.drop_columns([key]).take(pa.array(position, mask=position < 0))
    for name in rows.column_names:
        table = table.append_column(name, rows.column(name))
    return table


def _reference_ms(reference: str | None) -> int:
    if reference is None:
        return int(time.time() * 1000)
    when = dt.datetime.fromisoformat(reference.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)
