"""The project's tests, one folder per part of the project (``tests/README.md`` says how they are organised)."""
