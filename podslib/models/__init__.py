"""Models: loading a policy (LoRA, reference, merged weights) and the embedded tiny model."""
