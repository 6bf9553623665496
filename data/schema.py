"""The canonical schema, declared once.

Every source maps into these Arrow schemas; validation checks rows against them; prepare writes
tables whose columns are named here. Bump SCHEMA_VERSION whenever a column changes meaning.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

# Order matters: the int8 code of an event type is its position here, and codes are written to
# shards. Append new types at the end; never reorder.
EVENT_TYPES: tuple[str, ...] = (
    "view",
    "follow",
    "free_membership",
    "paid_membership",
    "purchase",
    "like",
    "unfollow",
    "cancel",
)
EVENT_CODE: dict[str, int] = {name: code for code, name in enumerate(EVENT_TYPES)}

# Ids are opaque strings from the platform. This is the shape a well-formed one has; anything
# else (empty, whitespace, control characters, absurdly long) is quarantined.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$"

TIMESTAMP = pa.timestamp("ms", tz="UTC")

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("creator_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        # Null only for sources that have no time at all (then the split is per-user or given).
        pa.field("timestamp", TIMESTAMP, nullable=True),
        # Event weight/amount: membership tier price, purchase amount, play count, rating.
        pa.field("value", pa.float32(), nullable=False),
    ],
    metadata={"schema_version": str(SCHEMA_VERSION)},
)

CREATORS = pa.schema(
    [
        pa.field("creator_id", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=True),
        pa.field("category", pa.string(), nullable=True),
        pa.field("tags", pa.list_(pa.string()), nullable=True),
        pa.field("description", pa.string(), nullable=True),
        pa.field("created_at", TIMESTAMP, nullable=True),
    ],
    metadata={"schema_version": str(SCHEMA_VERSION)},
)

USERS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("signup_at", TIMESTAMP, nullable=True),
        pa.field("country", pa.string(), nullable=True),
        # Free-form extra attributes a source has (age bucket, occupation, ...), as "key=value".
        pa.field("attributes", pa.list_(pa.string()), nullable=True),
    ],
    metadata={"schema_version": str(SCHEMA_VERSION)},
)

# Optional column a source adds to interactions when the dataset ships its own split
# (LightGCN's train.txt/test.txt): "train" or "test".
SPLIT_COLUMN = "split"
SOURCE_ROW_COLUMN = "_row"  # position of the row in its source, carried into quarantine

QUARANTINE = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),  # interactions | creators | users
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=True),
        # The offending row as the source gave it, JSON-encoded (bytes that were not UTF-8 are
        # written with backslash escapes), so nothing is lost.
        pa.field("raw", pa.string(), nullable=False),
    ]
)

# Quarantine reasons: a closed set, so summaries and tests can name them.
REASONS: tuple[str, ...] = (
    "malformed_row",  # wrong number of fields / unparseable line
    "missing_field",
    "bad_encoding",
    "wrong_type",
    "unknown_event_type",
    "negative_value",
    "future_timestamp",
    "malformed_id",
    "unknown_creator",
    "duplicate",
)
