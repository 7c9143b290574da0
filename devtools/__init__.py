"""Developer tools: real-runtime test beds for demos and tests (not shipped in the package)."""
