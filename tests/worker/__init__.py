"""The face_tagger worker: on its own, as an HTC job, and as a batch."""
