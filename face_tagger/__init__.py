"""The face tagger worker. ``face_tagger.py`` runs alone in its container, as ``python /opt/face_tagger.py``."""
