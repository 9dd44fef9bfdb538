"""pods-kit: Policy Optimization with Down-Sampling (PODS) for RL fine-tuning of LLMs.

The public surface: the small core (`select` and the `rule` decorator, `group_advantages`,
`grpo_loss`), the run's `Config` and `train`. docs/design.md maps the rest of the package.
"""

from podslib.config import Config
from podslib.core.advantages import group_advantages
from podslib.core.loss import grpo_loss
from podslib.core.selection import rule, select
from podslib.training.trainer import train

__version__ = "0.1.0"
__all__ = ["Config", "group_advantages", "grpo_loss", "rule", "select", "train"]
