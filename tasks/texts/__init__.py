"""Texts: the Auto Text Generator (WordNet offline or an OpenAI-compatible LLM) and text banks."""
