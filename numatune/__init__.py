"""numatune: NUMA topology auditor and auto-tuning launcher for CPU MoE inference."""

__version__ = "0.1.0"
