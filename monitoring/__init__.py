"""The monitoring room: what the service served, measured.

The room sits above `serving/` (it may import serving, ranking, search, index, data and common;
nothing imports it). It reads the service's answer log (serving.answer_log) and the published
versions, never the service's memory, so a relevance team can watch production without asking
anyone:

- `answers`: the answer log (sampled, rotated Arrow IPC files) read into numpy columns, `Answers`:
  one row per logged answer, its creators as rows of a catalog;
- `catalog`: the served creators as the figures need them (`Catalog`: popularity, first-seen
  time, category, unit embeddings), each fan's history mix and the interactions made later;
- `metrics`: the relevance figures over a set of answers (`compute`): catalog coverage, Gini of
  exposure, new and long-tail exposure, popularity, novelty, intra-list diversity,
  personalisation, calibration, scores and the online recall proxy, each formula with its source;
- `live`: the service's live-metric thresholds as Prometheus alerting rules.
"""
