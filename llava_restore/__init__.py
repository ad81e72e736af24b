"""llava-restore: RESTORE visual-token reduction for LLaVA-1.5."""

__version__ = "0.1.0"
