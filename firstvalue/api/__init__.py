"""The HTTP side: ingest, the JSON API, and the server that runs them with the scheduler."""
