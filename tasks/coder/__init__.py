"""CODER vectors: cosine similarities of images to every text of a text bank."""
