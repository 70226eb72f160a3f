"""Statistics over finished runs: fits and intervals."""
