"""Ingest: turn an image folder, CLIP_benchmark shards or the built-in demo into WebDataset shards."""
