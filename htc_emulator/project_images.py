"""The images a project can run: what its container-registry routes list and what the scheduler starts.

Two sources, both limited to the repositories the project created
(``POST .../container-registry/repo/{repoName}``):

- images registered from Dockerfiles (:class:`~htc_emulator.local_images.LocalImages`),
  which jobs run as processes;
- images pushed to the project's repositories in the real container registry
  (:class:`~htc_emulator.container_registry.ContainerRegistry`, where one runs),
  which jobs run as containers.

Under the platform profile (:mod:`htc_emulator.platform_profile`) an image is
replicated before it can run: its status is unknown (404), then ``PENDING``, then
``READY``, counted from its push (as the platform first sees it) or, for a
registered image, from the creation of its repository; a batch naming an image
that is not ``READY`` is refused at submit; and where a real registry runs it
holds what was pushed to it only, not the registered images.
"""

from __future__ import annotations

from .container_registry import ContainerRegistry, project_namespace
from .errors import InvalidRequest
from .local_images import LocalImage, LocalImages, normalize_image_name
from .models import Backend, now
from .platform_profile import IDEAL, PlatformProfile

READY = "READY"
PENDING = "PENDING"

# The registry host a project's registry URI names where no real registry runs.
PLACEHOLDER_REGISTRY_HOST = "registry.htc-emulator.invalid"


class ProjectImages:
    """Looks a project's images up in the local images and the container registry."""

    def __init__(
        self,
        backend: Backend,
        local_images: LocalImages,
        container_registry: ContainerRegistry | None = None,
        profile: PlatformProfile = IDEAL,
    ) -> None:
        self.backend = backend
        self.local_images = local_images
        self.container_registry = container_registry
        self.profile = profile

    @property
    def registry_host(self) -> str:
        """The host of the registry images are pushed to (a placeholder where none runs)."""
        return self.container_registry.host if self.container_registry is not None else PLACEHOLDER_REGISTRY_HOST

    @property
    def holds_registered_images(self) -> bool:
        """Whether registered images are in the projects' registries (not where a real one holds pushed ones only)."""
        return self.container_registry is None or not self.profile.registry_holds_pushed_images_only

    def _registered(self, repositories: list[str]) -> list[str]:
        if not self.holds_registered_images:
            return []
        return [name for name in self.local_images.names() if self.local_images.get(name).repository in repositories]

    def _pushed(self, project_id: str, repositories: list[str]) -> list[str]:
        if self.container_registry is None:
            return []
        return self.container_registry.images(project_id, repositories)

    def names(self, project_id: str) -> list[str]:
        """``repository:tag`` of every image in the project's registry, registered or pushed, replicated or not."""
        repositories = self.backend.repositories(project_id)
        return sorted(set(self._registered(repositories)) | set(self._pushed(project_id, repositories)))

    def status(self, project_id: str, image_name: str) -> str | None:
        """``READY``, ``PENDING`` (being replicated), or None: the platform does not know the image (yet)."""
        name = normalize_image_name(image_name)
        repository = name.rsplit(":", 1)[0]
        if repository not in self.backend.repositories(project_id):
            return None
        if name in self._pushed(project_id, [repository]):
            since = self.backend.image_first_seen(project_id, name)
        elif name in self._registered([repository]):
            since = self.backend.repository_created_at(project_id, repository)
        else:
            return None
        age = (now() - since).total_seconds()
        if age < self.profile.image_unknown_seconds:
            return None
        return PENDING if age < self.profile.image_ready_after else READY

    def require_ready(self, project_id: str, batches: list[dict]) -> None:
        """Refuse (400 naming imageName) a submit whose batch names an image that is not READY, as the platform does."""
        if not self.profile.images_checked_at_submit:
            return
        for number, batch in enumerate(batches):
            name = batch["htcJobDefinition"]["imageName"]
            status = self.status(project_id, name)
            if status != READY:
                state = (
                    "still being replicated (PENDING)"
                    if status
                    else "unknown to the platform: not pushed to the project's registry, or pushed too recently"
                )
                raise InvalidRequest(
                    (number, "htcJobDefinition", "imageName"),
                    f"image {name} is {state}: push it to the project's repository and wait until "
                    f"GET .../container-registry/images/{name} says READY",
                )

    def local_image(self, project_id: str, image_name: str) -> LocalImage | None:
        """The registered image a job of the project runs as a process, if its repository is the project's."""
        image = self.local_images.get(image_name)
        if image is None or not self.holds_registered_images:
            return None
        if image.repository not in self.backend.repositories(project_id):
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
