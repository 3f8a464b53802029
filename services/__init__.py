"""The two services (gateway, worker), the shipped workflows and the `tidings` CLI."""
