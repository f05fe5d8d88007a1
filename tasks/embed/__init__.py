"""Embedding: open_clip image and text embeddings, L2-normalised."""
