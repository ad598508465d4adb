"""The client layer (htc_helpers, config, quickstart, tutorial_helpers), on the session emulator and on faulty ones."""
