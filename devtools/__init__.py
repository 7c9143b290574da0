"""Development tools: test beds, fakes and the fake API server used by tests, demo and benchmarks."""
