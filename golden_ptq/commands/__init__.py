"""The jobs of the `golden-ptq` command line, one module each; `golden_ptq.cli` parses and dispatches."""
