"""Embedding: open_clip image and text embeddings, L2-normalised; the image-encoder adapters a model loads."""
