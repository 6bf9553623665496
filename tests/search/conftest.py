"""Fixtures of the search tests: the index tests' tiny dataset, model and published store
(tests/index/conftest.py), registered here too (package scope: built once for this folder)."""

from tests.index import conftest as index_fixtures

one_thread = index_fixtures.one_thread
tiny_data = index_fixtures.tiny_data
tiny_checkpoint = index_fixtures.tiny_checkpoint
published = index_fixtures.published
