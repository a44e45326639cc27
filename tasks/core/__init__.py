"""What both services import. Nothing here imports the jobs, the engines or the worker runtime, nor
numpy, scipy, scikit-image or the provider's SDK (checked by the import-linter contracts in setup.cfg)."""
