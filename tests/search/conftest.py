"""Fixtures of the search tests: the index tests' tiny dataset, model and published store
(tests/index/conftest.py), registered here too (package scope: built once for this folder)."""

import pytest

from index import store
from search import queries as qs
from tests.index import conftest as index_fixtures

one_thread = index_fixtures.one_thread
tiny_data = index_fixtures.tiny_data
tiny_checkpoint = index_fixtures.tiny_checkpoint
published = index_fixtures.published


@pytest.fixture(scope="module")
def catalog(published) -> qs.Catalog:
    """The published tiny version's catalog, as the query sets read it."""
    return qs.Catalog.of_version(store.versions_dir(published.store) / store.current_version(
        published.store))  # fmt: skip
