"""Real face photos from the package registries, their ground truth, a scale-up generator and scoring helpers."""
