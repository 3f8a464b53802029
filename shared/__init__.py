"""Code both services import: settings, Redis names, the event model, the bus, the SSE codec."""
