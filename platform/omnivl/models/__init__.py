"""OmniVL model code: single-device PyTorch, no Ray and no torch.distributed (DESIGN.md principle 1)."""
