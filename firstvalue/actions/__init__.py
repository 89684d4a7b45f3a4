"""Actions: the outbox the engine writes, templates, and the dispatchers that deliver."""
