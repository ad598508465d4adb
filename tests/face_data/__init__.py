"""The photo set (face_data): the fetch, the augmentation, the scale-up, the scoring."""
