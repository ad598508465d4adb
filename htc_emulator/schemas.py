"""Request bodies as pydantic models, with the spec's constraints.

Strict types (no "5" for 5), the spec's enums, ranges and patterns. Java
bean validation, which the platform uses, matches a ``pattern`` against
the whole value, so patterns here are full matches. Unknown and read-only
properties are ignored, as the platform's JSON reader does. Optional
properties default to None without being nullable: the spec marks few
fields nullable, so an explicit ``null`` elsewhere is refused. Every
string of every body, keys included, must be text that can be served
back: JSON allows lone UTF-16 surrogates (``"\\ud800"``), UTF-8 does not.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .auth import RESERVED_CLAIMS
from .local_images import IMAGE_NAME_RE
from .validation import MAX_JOBS_PER_BATCH

RescaleRegion = Literal[
    "AWS_AP_SOUTHEAST_1",
    "AWS_CA_CENTRAL_1",
    "AWS_EU_NORTH_1",
    "AWS_EU_CENTRAL_1",
    "AWS_EU_WEST_1",
    "AWS_EU_WEST_2",
    "AWS_EU_WEST_3",
    "AWS_SA_EAST_1",
    "AWS_US_EAST_2",
    "AWS_US_WEST_2",
    "AWS_US_EAST_1",
    "GCP_ASIA_SOUTHEAST_1",
    "GCP_US_CENTRAL_1",
    "GCP_US_EAST_1",
    "GCP_US_EAST_2",
    "GCP_US_EAST_4",
    "GCP_US_WEST_1",
    "GCP_US_WEST_4",
    "GCP_EU_WEST_1",
    "GCP_EU_WEST_2",
    "GCP_EU_WEST_3",
    "GCP_EU_WEST_4",
    "GCP_CA_CENTRAL_1",
    "NGC_ENOCH_1",
    "AZURE_US_WEST_2",
    "AZURE_US_EAST_2",
    "AZURE_US_SOUTHCENTRAL",
    "AZURE_EU_NORTH",
    "RC_ICELAND_1",
    "COREWEAVE_US_EAST_4",
    "UNASSIGNED",
]
SupportedRescaleRegion = Literal[
    "AWS_AP_SOUTHEAST_1",
    "AWS_CA_CENTRAL_1",
    "AWS_EU_NORTH_1",
    "AWS_EU_CENTRAL_1",
    "AWS_EU_WEST_1",
    "AWS_EU_WEST_2",
    "AWS_EU_WEST_3",
    "AWS_SA_EAST_1",
    "AWS_US_EAST_2",
    "AWS_US_WEST_2",
    "AWS_US_EAST_1",
    "GCP_ASIA_SOUTHEAST_1",
    "GCP_US_CENTRAL_1",
    "GCP_US_EAST_1",
    "GCP_US_EAST_2",
    "GCP_US_EAST_4",
    "GCP_US_WEST_1",
    "GCP_US_WEST_4",
    "GCP_EU_WEST_1",
    "GCP_EU_WEST_2",
    "GCP_EU_WEST_3",
    "GCP_EU_WEST_4",
    "GCP_CA_CENTRAL_1",
    "AZURE_US_WEST_2",
    "AZURE_US_SOUTHCENTRAL",
]
CloudProvider = Literal["AWS", "GCP", "NGC", "AZURE", "RC", "COREWEAVE", "UNASSIGNED"]
Architecture = Literal["AARCH64", "X86", "A100"]
JobPriority = Literal["ON_DEMAND_PRIORITY", "ON_DEMAND_ECONOMY"]
JobStatus = Literal[
    "SUBMITTED_TO_RESCALE",
    "SUBMITTED_TO_PROVIDER",
    "RUNNABLE",
    "STARTING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "POD_SUCCEEDED",
    "POD_FAILED",
]
LifecycleStatus = Literal["DELETED", "ACTIVE", "ARCHIVED"]
ViewType = Literal["FULL", "SIMPLE"]

# The spec's EnvPair.name pattern (a leading negative lookahead) ...
_ENV_NAME_PATTERN = re.compile(
    r"^(?!.*AWS_BATCH_|RESCALE_PROJECT_ID|RESCALE_TASK_ID|RESCALE_JOB_ID|PROJECT_SHARED_FOLDER"
    r"|TASK_SHARED_FOLDER|AWS_SESSION_TOKEN|AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|RDF_).*"
)
# ... does not cover the RESCALE_HTC_* names the envs description also
# reserves; the platform checks those separately (changelog 2022-08-01).
_RESERVED_ENV_NAMES = frozenset(
    {
        "RESCALE_HTC_REGION",
        "RESCALE_HTC_TASK_ID",
        "RESCALE_HTC_PROJECT_ID",
        "RESCALE_HTC_BEARER_TOKEN",
    }
)


def _require_servable_text(value: object) -> None:
    """Refuse strings (in lists and mappings too) that cannot be encoded as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"must be valid Unicode text; character {exc.start} is a lone surrogate") from None
    elif isinstance(value, list):
        for item in value:
            _require_servable_text(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _require_servable_text(key)
            _require_servable_text(item)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @field_validator("*")
    @classmethod
    def _servable_text(cls, value: object) -> object:
        # Nested bodies check their own fields; this sees strings, lists and mappings of them.
        _require_servable_text(value)
        return value


class RegionComputeSettings(_Body):
    computeRegion: RescaleRegion = None


class RegionStorageSettings(_Body):
    storageRegion: RescaleRegion = None


class RegionSettings(_Body):
    computeSettings: RegionComputeSettings
    storageSettings: RegionStorageSettings


class ProjectCreate(_Body):
    """HTCProject as a request body."""

    projectName: str
    projectDescription: str
    regions: list[RescaleRegion] = []
    regionSettings: list[RegionSettings] = []


class ProjectUpdate(_Body):
    """HTCProjectUpdate: regions to add."""

    regions: list[RescaleRegion] = []


class TaskCreate(_Body):
    """HTCTask as a request body."""

    taskName: str
    taskDescription: str


class TaskUpdate(_Body):
    lifecycleStatus: LifecycleStatus


class EnvPair(_Body):
    name: str
    value: str

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if not name or "=" in name or "\x00" in name:
            raise ValueError("must be a non-empty environment variable name without '='")
        if not _ENV_NAME_PATTERN.fullmatch(name) or name in _RESERVED_ENV_NAMES:
            raise ValueError(f"{name} is a reserved environment variable name")
        # The original tutorial: the platform sets AWS_* itself (deviations: "AWS_ environment variables").
        if name.startswith("AWS_"):
            raise ValueError(f"{name}: names beginning with AWS_ are reserved by the platform")
        return name

    @field_validator("value")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class NameValuePair(_Body):
    name: str
    value: str


class Tag(_Body):
    key: str = None
    value: str = None


class RetryStrategy(_Body):
    maxRetries: int = Field(default=None, ge=0, le=10)


class ExperimentalFields(_Body):
    cloudFileSystems: bool = None
    kubernetesSwap: bool = None
    privilegedMode: bool = None
    rescaleFilesRDFAgent: bool = None


class JobDefinition(_Body):
    """HTCJobDefinition."""

    imageName: str = Field(min_length=1)
    architecture: Architecture = None
    claims: list[NameValuePair] = None
    commands: list[str] = None
    envs: list[EnvPair] = None
    execTimeoutSeconds: int = Field(default=None, ge=60, le=1209600)
    maxDiskGiB: int = Field(default=None, ge=0, le=64000)
    maxMemory: int = Field(default=None, ge=4, le=235520)
    maxSwap: int = Field(default=None, ge=0)
    maxVCpus: int = Field(default=None, ge=1, le=64)
    priority: JobPriority = None
    tags: dict[str, str] = None
    workingDir: str | None = None

    @field_validator("imageName")
    @classmethod
    def _image_name(cls, name: str) -> str:
        if not IMAGE_NAME_RE.fullmatch(name):
            raise ValueError("must look like repository[:tag] (lower-case repository path)")
        return name

    @field_validator("commands")
    @classmethod
    def _no_nul(cls, commands: list[str]) -> list[str]:
        if any("\x00" in c for c in commands):
            raise ValueError("must not contain NUL characters")
        return commands

    @field_validator("claims")
    @classmethod
    def _claims_not_reserved(cls, claims: list[NameValuePair]) -> list[NameValuePair]:
        taken = sorted({c.name for c in claims} & RESERVED_CLAIMS)
        if taken:
            raise ValueError(f"claim names reserved by the platform: {', '.join(taken)}")
        return claims


class JobSubmitRequest(_Body):
    """HTCJobSubmitRequest; ``group`` and the other read-only fields are ignored."""

    htcJobDefinition: JobDefinition
    batchSize: int = Field(default=None, ge=1, le=MAX_JOBS_PER_BATCH)
    jobName: str = None
    regions: list[RescaleRegion] = None
    tags: list[Tag] = None
    retryStrategy: RetryStrategy = None
    experimental: ExperimentalFields = None
    rescaleProjectId: str | None = None
    cloudProvider: CloudProvider = None

    @field_validator("regions")
    @classmethod
    def _unique_regions(cls, regions: list[str]) -> list[str]:
        if len(set(regions)) != len(regions):
            raise ValueError("regions must be unique")
        return regions


# --- policies: limits, dimensions, task retention ------------------------------------

ModifierRole = Literal["WORKSPACE_ADMIN", "PROJECT_ADMIN"]
AutoscalingProfile = Literal["PROFILE_UNSPECIFIED", "OPTIMIZE_UTILIZATION", "BALANCED", "UNRECOGNIZED"]


class LimitCreate(_Body):
    """HTCLimitCreate; vCPUs in HTCProjectLimit's range."""

    vCPUs: int = Field(ge=0, le=999999)
    modifierRole: ModifierRole


class LimitUpdate(_Body):
    vCPUs: int = Field(ge=0, le=999999)


class RetentionPolicyBody(_Body):
    """TaskRetentionPolicy / WorkspaceTaskRetentionPolicy as a request body (hours; 0 disables)."""

    archiveAfter: int = Field(ge=0, le=2147483647)
    deleteAfter: int = Field(ge=0, le=2147483647)


class ComputeEnvironment(_Body):
    """HTCComputeEnvironment; ``derived`` is read-only and ignored."""

    region: RescaleRegion = None
    priority: JobPriority = None
    machineType: str = None
    hyperthreading: bool = None
    computeScalingPolicy: AutoscalingProfile = None
