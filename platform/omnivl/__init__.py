"""OmniVL platform: pretrain, evaluate and serve one vision-language model for images and videos on Ray.

Layers (dependencies point one way): library (spec, data, models, losses, tasks, eval) -> Ray seams
(`omnivl.cluster`) -> entry points (`omnivl.cli`).
"""

__version__ = "0.1.0"
