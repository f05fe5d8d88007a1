"""Classification: zero-shot scoring methods over image and text embeddings, and prediction rows."""
