"""The online pipeline room: from a fan's id to the creators to show them.

- `bundle` — one index version and the user tower it was built for, checked to agree
- `stages` — the named stages lookup → encode → retrieve → filter → rank → fallback, each a
  small object over a `Batch`, and the `Pipeline` that runs and times them
- `towers` — where the encode stage's tower runs: in-process onnxruntime or Triton
- `recommender` — the served bundle, safe swaps, `recommend_many` and `similar`
"""
