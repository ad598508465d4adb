"""The worker image and the container path: the built image, the registry, jobs as containers, the session audit."""
