"""The HTTP room: the service's endpoints, one router each, over the recommender.

- `app` — `create_app`: the routers assembled around one recommender, the index poller
- `recommend`, `similar`, `health` — the routers (POST /recommend, GET /similar/{id},
  /healthz, /readyz, /metrics)
- `schemas` — the JSON shapes of requests and answers
- `batcher` — requests that arrive together are answered as one batch
- `metrics` — the Prometheus metrics of one app
- `state` — what the routers share (`Services`), handed to each handler
"""
