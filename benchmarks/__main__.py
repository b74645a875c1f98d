"""``python -m benchmarks``: the platform's figures (see benchmarks/platform_bench.py)."""

from benchmarks.platform_bench import main

main()
