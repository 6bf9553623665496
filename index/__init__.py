"""The creator index: from a trained checkpoint to a searchable, versioned FAISS index with the
user tower it was built for.

One job per module, each with the tests that cover it:

- `checkpoint` — a Lightning checkpoint's towers without Lightning or pickle; the model version
  (tests/index/test_export.py)
- `catalog` — a prepared dataset's creators and users as tower inputs; newer vocabulary through
  the content path (test_export.py, test_rebuild.py)
- `export` — `python -m index export`: vectors, ids, fingerprint, probes, manifest (test_export.py)
- `user_tower` — the user tower as ONNX, parity with torch checked (tests/index/test_user_tower.py)
- `onnx` — reading a published tower: its signature, running it in-process (test_user_tower.py)
- `build` — factory strings, the metric check, CPU or GPU in one place (test_build.py)
- `tune` — recall@k against exact search, the nprobe × k_factor_rf sweep (test_build.py)
- `search` — search with exclusions, over-fetching (test_search.py)
- `store` — versions, the atomic `current` pointer, verified loading, probes (test_store.py)
- `config` — the typed config of the rebuild job (test_configs.py)
- `drift` — drift from the current version: aligned cosine shift, neighbour and list overlap,
  rank correlation, popularity shift, a two-sample test; the gate's verdict (test_drift.py)
- `drift_report` — drift.json, the self-contained drift.html with its plots, W&B (test_drift.py)
- `rebuild` — `python -m index rebuild`: detect, export, build or extend, tune, validate,
  measure drift, publish with the user tower (test_rebuild.py, test_drift.py)

`store`, `search` and `onnx` are what serving loads on its request path: they import neither
torch nor anything of training.
"""
