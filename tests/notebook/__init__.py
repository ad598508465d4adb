"""The notebook: its sections run alone, the run in JupyterLab, and run_tutorial.py that executes it."""
