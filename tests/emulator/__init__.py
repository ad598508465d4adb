"""The emulator's tests, one module per resource or subject (``htc_emulator/README.md`` maps them)."""
