"""Creator search (issue 16): a query → creators, from the retrievers the index rebuild job
writes into each published version (lexical now; semantic and personal to come), fused."""
