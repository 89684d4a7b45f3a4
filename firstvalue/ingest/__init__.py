"""Ingest: Segment-spec messages over HTTP and from files, validated one by one and stored."""
