"""pods-kit: Policy Optimization with Down-Sampling (PODS) for RL fine-tuning of LLMs."""

__version__ = "0.1.0"
