"""The rank stage: re-scores the retrieval candidates with what the towers' dot product cannot see
(issue 17). `features` computes them from one window of pairs and the catalog."""
