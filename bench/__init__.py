"""The benchmarks: the load client, the scenarios, the report (``bench/run`` runs them)."""
