"""The OpenAI-compatible proxy: the wire format, upstream calls, fallback, fusion and settlement (issue 13)."""
