"""The results of a suite: paired statistics against clip, the leaderboard's tables, benchmark.csv and studies."""
