"""Checks on the project as a whole: self-contained, and the rules its parts share."""
