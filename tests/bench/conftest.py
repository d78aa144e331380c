# tests/bench/ holds the benchmark run by scripts/bench.sh, not tests: pytest collects nothing here.
collect_ignore_glob = ["*"]
