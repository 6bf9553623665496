"""The creator index: from a trained checkpoint to a searchable, versioned FAISS index.

One job per module, each with the tests that cover it:

- `checkpoint` — a Lightning checkpoint's towers without Lightning or pickle; the model version
  (tests/index/test_export.py)
- `catalog` — a prepared dataset's creators and users as tower inputs; newer vocabulary through
  the content path (test_export.py, test_rebuild.py)
- `export` — `python -m index export`: vectors, ids, fingerprint, probes, manifest (test_export.py)
- `build` — factory strings, the metric check, CPU or GPU in one place (test_build.py)
- `tune` — recall@k against exact search, the nprobe × k_factor_rf sweep (test_build.py)
- `store` — versions, the atomic `current` pointer, verified loading (test_store.py)
- `config` — the typed config of the rebuild job (test_configs.py)
- `rebuild` — `python -m index rebuild`: detect, export, build or extend, tune, validate,
  publish (test_rebuild.py)
- `errors` — failure classes and the exit codes a scheduler sees
"""
