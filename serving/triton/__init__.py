"""The Triton room: the user tower of each index version on NVIDIA Triton.

- `repository` — model repositories (config.pbtxt for the onnxruntime backend in production and
  the Python backend locally) and the numbered versions of the `user_tower` model
- `server` — a real `tritonserver` process (`python -m serving triton`), its environment
- `client` — tritonclient wrapped: numpy in, unit vectors out, `TritonUnavailable` to degrade on
- `backend/model.py` — the Python-backend model, copied into local repositories; it runs inside
  Triton's own environment and imports nothing of the project
"""
