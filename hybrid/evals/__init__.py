"""The evaluation harness (``hybrid eval``) and the load generator (``hybrid bench``): quality, cost and latency of
targets side by side, measured through the router on a team's own workload."""
