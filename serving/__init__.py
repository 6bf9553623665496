"""The serving stage: the published model + index versions answering over HTTP.

Rooms, each a folder or module that says what it holds:

- `features/` — the online feature store (protocol, embedded and Redis backends, the offline
  materialise job)
- `triton/` — the user tower on NVIDIA Triton (model repositories, the server process, the
  client, the Python-backend model)
- `pipeline/` — the online pipeline: bundles (a model + index pair), the named stages lookup →
  encode → retrieve → filter → rank → fallback, where the tower runs, the recommender
- `api/` — the HTTP service: one router per endpoint, batching, metrics, shared state
- `answer_log` — sampled, rotated JSON lines of served answers (for monitoring)
- `config`, `service` (`up`/`down` wiring), `demo` (`try`), `__main__` (the command line)

Serving reads what the index stage published (index.store, index.onnx, index.search) and the
feature contract (data.contract); it never imports training or Lightning.
"""
