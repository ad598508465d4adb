"""Developer tools that ship beside the project, not inside its runtime packages."""
