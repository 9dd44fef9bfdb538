"""The small core of PODS: down-sampling rules, group advantages and the GRPO loss. Tensors in,
tensors out; it imports torch and the registry only (tests/test_layout.py holds it to that)."""
