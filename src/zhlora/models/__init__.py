"""Model loading (thin wrappers over transformers) and zhlora's native model families."""
