"""The dashboard: server-rendered pages over the store the engine writes (docs/dashboard.md)."""
