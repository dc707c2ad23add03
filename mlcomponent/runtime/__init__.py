"""The runtime: load the entry point, hold the model, run requests through the function."""
