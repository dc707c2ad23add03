"""The Open Inference Protocol wire format: decode requests, check and encode responses."""
