"""tradeoff-bench: what did fine-tuning a foundation model for a biometric task gain
in-domain, and what did it cost in general ability?"""

__version__ = "0.1.0"
