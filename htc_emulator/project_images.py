"""The images a project can run: what its container-registry routes list and what the scheduler starts.

Two sources, both limited to the repositories the project created
(``POST .../container-registry/repo/{repoName}``):

- images registered from Dockerfiles (:class:`~htc_emulator.local_images.LocalImages`),
  which jobs run as processes;
- images pushed to the project's repositories in the real container registry
  (:class:`~htc_emulator.container_registry.ContainerRegistry`, where one runs),
  which jobs run as containers.
"""

from __future__ import annotations

from .container_registry import ContainerRegistry, project_namespace
from .local_images import LocalImage, LocalImages, normalize_image_name
from .models import Backend

# The registry host a project's registry URI names where no real registry runs.
PLACEHOLDER_REGISTRY_HOST = "registry.htc-emulator.invalid"


class ProjectImages:
    """Looks a project's images up in the local images and the container registry."""

    def __init__(
        self, backend: Backend, local_images: LocalImages, container_registry: ContainerRegistry | None = None
    ) -> None:
        self.backend = backend
        self.local_images = local_images
        self.container_registry = container_registry

    @property
    def registry_host(self) -> str:
        """The host of the registry images are pushed to (a placeholder where none runs)."""
        return self.container_registry.host if self.container_registry is not None else PLACEHOLDER_REGISTRY_HOST

    def names(self, project_id: str) -> list[str]:
        """``repository:tag`` of every image the project can run, registered or pushed."""
        repositories = self.backend.repositories(project_id)
        registered = [
            name for name in self.local_images.names() if self.local_images.get(name).repository in repositories
        ]
        if self.container_registry is None:
            return registered
        return sorted(set(registered) | set(self.container_registry.images(project_id, repositories)))

    def is_ready(self, project_id: str, image_name: str) -> bool:
        return normalize_image_name(image_name) in self.names(project_id)

    def local_image(self, project_id: str, image_name: str) -> LocalImage | None:
        """The registered image a job of the project runs as a process, if its repository is the project's."""
        image = self.local_images.get(image_name)
        if image is None or image.repository not in self.backend.repositories(project_id):
            return None
        return image

    def pushed_reference(self, project_id: str, image_name: str) -> str | None:
        """The registry reference of the image if it was pushed to one of the project's repositories."""
        if self.container_registry is None:
            return None
        name = normalize_image_name(image_name)
        repository = name.rsplit(":", 1)[0]
        if repository not in self.backend.repositories(project_id):
            return None
        if name not in self.container_registry.images(project_id, [repository]):
            return None
        return f"{self.container_registry.host}/{project_namespace(project_id)}{name}"
