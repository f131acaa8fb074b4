"""Command-line tools (``python -m golden_ptq.tools.<name>``)."""
