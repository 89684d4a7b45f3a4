"""firstvalue: an onboarding orchestration engine."""

__version__ = "0.1.0"
