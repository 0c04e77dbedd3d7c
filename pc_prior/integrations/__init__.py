"""CompressAI entropy models backed by probabilistic circuits."""
