"""HTTP transport over the data plane."""
