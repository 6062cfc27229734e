"""Embedder backends: the protocol, sentence-transformers on torch, ONNX Runtime, static vectors, and the factory."""
