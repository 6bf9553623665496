"""What every stage shares and nothing else: atomic writes, artifact manifests, the typed config
loader, error classes with their exit codes, and the log format. It imports no other folder of
the project.

- `io` — atomic files, JSON, .npy, parquet and whole folders
- `artifacts` — checksums, verifying a folder against its manifest, provenance
- `config` — dataclasses + YAML + `--section.field value` flags (jsonargparse, as training's CLI)
- `errors` — ConfigError and the other failure classes, each with the exit code a scheduler sees
- `logs` — the command lines' log format
- `report` — self-contained HTML reports (figures embedded) and figures logged to W&B offline
"""
