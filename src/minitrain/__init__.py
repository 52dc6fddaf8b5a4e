"""minitrain: a small GPT trainer built to make training instability visible and diagnosable."""

__version__ = "0.1.0"
