"""Entities as the spec's response objects: how the routes shape what the model returns.

Every property the spec documents for a response is sent, ``null`` while
it has no value (a job's ``startedAt`` before it starts, a batch's
``group`` when it has none), as the platform does: its clients read such
keys unconditionally. Where the spec does not mark those fields nullable,
:mod:`htc_emulator.deviations` says so.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

from . import auth
from .models import SUMMARY_STATUSES, Job, JobEvent, LogLine, Metrics, Project, Task
from .policies import MACHINE_TYPES, PROVIDER_ARCHITECTURES, Limit, RetentionPolicy, WorkspaceLimit
from .storage_rights import PresignedUpload, StorageGrant


def isotime(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def provider_of(region: str) -> str:
    return region.split("_", 1)[0]


def registry_uri(project_id: str, registry_host: str) -> str:
    """The project's namespace in the registry (``registry_host``: the real one, where it runs)."""
    return f"{registry_host}/projects/{project_id}/"


def project_view(project: Project, registry_host: str) -> dict:
    return {
        "projectId": project.project_id,
        "projectName": project.name,
        "projectDescription": project.description,
        "regions": project.regions,
        "regionSettings": [
            {
                "computeSettings": {"computeRegion": setting["computeSettings"].get("computeRegion")},
                "storageSettings": {"storageRegion": setting["storageSettings"].get("storageRegion")},
            }
            for setting in project.region_settings
        ],
        "createdBy": auth.USER_ID,
        "workspaceId": auth.WORKSPACE_ID,
        "organizationCode": project.organization_code,
        "createdAt": isotime(project.created_at),
        "containerRegistry": registry_uri(project.project_id, registry_host),
        "repositories": sorted(project.repositories),
        "projectFolderPath": project.folder_path,
    }


def repository_view(project: Project, name: str, created: bool, registry_host: str) -> dict:
    return {
        "repositoryName": name,
        "successfullyCreated": created,
        "projectId": project.project_id,
        "createdBy": auth.USER_ID,
        "workspaceId": auth.WORKSPACE_ID,
        "registryURI": registry_uri(project.project_id, registry_host),
    }


def image_list_view(project_id: str, registry_host: str, names: list[str]) -> dict:
    return {"containerRegistry": registry_uri(project_id, registry_host), "images": names}


def storage_option_view(bucket: str, region: str) -> dict:
    return {"storageName": bucket, "region": region, "provider": "AWS"}


def storage_token_view(grant: StorageGrant, project_id: str, bucket: str, with_storage_path: bool = True) -> dict:
    """A StorageAccessToken (plus ``storagePath``, unless told not to: see htc_emulator.deviations)."""
    view = {
        "projectSharedStoragePath": grant.shared_path,
        "storagePath": grant.storage_path,
        "projectId": project_id,
        "storageName": bucket,
        "region": grant.region,
        "user": f"{auth.WORKSPACE_ID}:{auth.USER_ID}",
        "expiration": isotime(grant.expiration),
        "credentials": grant.credentials,
        "provider": "AWS",
    }
    if not with_storage_path:
        del view["storagePath"]
    return view


def storage_tokens_view(
    default_region: str, grants: list[StorageGrant], project_id: str, bucket: str, with_storage_path: bool = True
) -> dict:
    return {
        "defaultRegion": default_region,
        "regionStores": [storage_token_view(grant, project_id, bucket, with_storage_path) for grant in grants],
    }


def regional_storage_view(default_region: str, grants: list[StorageGrant]) -> dict:
    stores = [
        {
            "region": grant.region,
            "projectPath": grant.shared_path,
            "taskPath": grant.storage_path,
            "credentials": grant.credentials,
            "provider": "AWS",
        }
        for grant in grants
    ]
    return {"rescaleRegion": default_region, "regionalStores": stores}


def presigned_url_view(upload: PresignedUpload) -> dict:
    # The spec types `url` as an object (a serialized java.net.URL); the
    # value is sent as the URL string, which is what a client can use.
    return {
        "url": upload.url,
        "storageName": upload.bucket,
        "region": upload.region,
        "expiration": isotime(upload.expiration),
    }


def task_view(task: Task) -> dict:
    return {
        "taskId": task.task_id,
        "projectId": task.project_id,
        "taskName": task.name,
        "taskDescription": task.description,
        "createdBy": auth.USER_ID,
        "workspaceId": auth.WORKSPACE_ID,
        "createdAt": isotime(task.created_at),
        "lastActiveAt": isotime(task.last_active_at),
        "archivedAt": isotime(task.archived_at),
        "deletedAt": isotime(task.deleted_at),
        "lifecycleStatus": task.lifecycle_status,
        "taskFolderPath": task.folder_path,
    }


def region_view(region: str) -> dict:
    provider = provider_of(region)
    return {
        "region": region,
        "enabled": True,
        "weight": 1,
        "supportedArchitectures": PROVIDER_ARCHITECTURES.get(provider, ["X86"]),
        "cloudProvider": provider,
        "updatedBy": auth.USER_ID,
        "updatedAt": isotime(dt.datetime(2024, 1, 1, tzinfo=dt.UTC)),
    }


# HTCJobSubmitRequest and HTCJobDefinition properties echoed back
# (regions is writeOnly and never echoed).
SUBMIT_FIELDS = (
    "jobName",
    "batchSize",
    "htcJobDefinition",
    "tags",
    "retryStrategy",
    "experimental",
    "rescaleProjectId",
    "cloudProvider",
)
DEFINITION_FIELDS = (
    "imageName",
    "maxVCpus",
    "maxMemory",
    "maxDiskGiB",
    "maxSwap",
    "tags",
    "commands",
    "envs",
    "claims",
    "execTimeoutSeconds",
    "architecture",
    "priority",
    "workingDir",
)


def submit_view(
    batch: dict, *, project_id: str, task_id: str, parent_job_id: str, group: str | None, received: dt.datetime
) -> dict:
    """The submitted batch echoed back with its read-only fields filled in."""
    # The defaults the emulator applies are echoed as values, the rest as null.
    echo = {name: batch.get(name) for name in SUBMIT_FIELDS}
    echo.update(
        batchSize=batch.get("batchSize", 1),
        tags=batch.get("tags", []),
        retryStrategy=batch.get("retryStrategy", {"maxRetries": 0}),
    )
    echo["htcJobDefinition"] = {name: batch["htcJobDefinition"].get(name) for name in DEFINITION_FIELDS}
    echo.update(
        {
            "parentJobId": parent_job_id,
            "projectId": project_id,
            "taskId": task_id,
            "createdBy": auth.USER_ID,
            "workspaceId": auth.WORKSPACE_ID,
            "rescaleTimeReceived": isotime(received),
            "jobDefinitionName": f"htc-emulator-{parent_job_id}",
            "group": group,
        }
    )
    return echo


def _attempt_times(events: list[JobEvent]) -> tuple[dt.datetime | None, dt.datetime | None]:
    """startedAt of the latest attempt and completedAt if it is terminal."""
    started = next((e.at for e in reversed(events) if e.status == "RUNNING"), None)
    completed = events[-1].at if events[-1].status in ("SUCCEEDED", "FAILED") else None
    return started, completed


def _last_outcome(events: list[JobEvent]) -> JobEvent | None:
    """The event that carries the latest failure code / exit code, if any."""
    return next((e for e in reversed(events) if e.failure_code or e.container), None)


def job_view(job: Job, as_of: dt.datetime | None, view_type: str = "FULL") -> dict:
    events = job.visible_events(as_of)
    current = events[-1]
    started, completed = _attempt_times(events)
    outcome = _last_outcome(events) if current.status in ("SUCCEEDED", "FAILED") else None
    view = {
        "jobUUID": job.job_id,
        "projectId": job.project_id,
        "taskId": job.task_id,
        "status": current.status,
        "statusReason": current.reason,
        "createdAt": isotime(job.created_at),
        "updatedAt": isotime(current.at),
        "startedAt": isotime(started),
        "completedAt": isotime(completed),
        "container": outcome.container if outcome else None,
        "group": job.group,
        "failureCode": outcome.failure_code if outcome is not None and outcome.failure_code else None,
    }
    if view_type == "SIMPLE":
        return view
    definition = job.definition
    instance_id = f"local-{job.job_id}" if started else None
    view.update(
        {
            "region": job.region,
            "workspaceId": auth.WORKSPACE_ID,
            "createdBy": auth.USER_ID,
            "imageName": definition["imageName"],
            "commands": definition.get("commands", []),
            "envs": definition.get("envs", []),
            "tags": job.tags,
            "architecture": definition.get("architecture", "X86"),
            "maxVCpus": definition.get("maxVCpus", 1),
            "minVCpus": definition.get("maxVCpus", 1),
            "maxMemory": definition.get("maxMemory", 128),
            "maxDiskGiB": definition.get("maxDiskGiB", 0),
            "maxSwap": definition.get("maxSwap"),
            "maxGpus": None,
            "execTimeoutSeconds": job.timeout_seconds,
            "instanceId": instance_id,
            "instanceLabels": _instance_labels(job) if started else None,
            "providerJobId": f"local-{job.job_id}" if started else None,
            "jobExecutionEnvironment": {"instanceId": instance_id, "instanceType": "local-process", "architecture": 1}
            if started
            else None,
        }
    )
    return view


def _instance_labels(job: Job) -> dict:
    return {
        "csp": provider_of(job.region),
        "priority": job.definition.get("priority", "ON_DEMAND_PRIORITY"),
        "instanceType": "local-process",
        "instanceArchitecture": job.definition.get("architecture", "X86"),
        "accountId": "htc-emulator",
        "region": job.region,
    }


def log_view(line: LogLine) -> dict:
    return {"timestamp": isotime(line.at), "message": line.message}


def task_statistics_view(counts: Counter) -> dict:
    return {"group": None, "jobStatuses": {status: counts[status] for status in SUMMARY_STATUSES}}


def group_statistics_view(group: str | None, counts: Counter) -> dict:
    return {"group": group, "jobStatuses": dict(counts)}


def event_view(job: Job, event: JobEvent) -> dict:
    return {
        "eventId": event.event_id,
        "jobId": job.job_id,
        "dateTime": isotime(event.at),
        "status": event.status,
        "statusReason": event.reason,
        "container": event.container,
        "instanceId": None,
        "instanceLabels": None,
        "userCancelledEvent": event.user_cancelled,
    }


def whoami_view() -> dict:
    """WhoAmI: the one emulated user, a workspace admin (RescaleUser sends each role under two names)."""
    roles = {"RescaleAdmin": False, "OrganizationAdmin": False, "WorkspaceAdmin": True, "Superuser": False}
    user = {
        "userId": auth.USER_ID,
        "email": auth.USER_EMAIL,
        "fullName": "HTC Emulator User",
        "workspace": {"id": auth.WORKSPACE_ID, "name": auth.WORKSPACE_NAME},
        "organization": {"code": auth.ORGANIZATION_CODE, "canViewOrganizationJobs": False},
    }
    for role, value in roles.items():
        user[f"is{role}"] = value
        user[role[0].lower() + role[1:]] = value
    return {"user": user, "userFeatures": {"count": 0, "results": []}}


def limit_view(limit: Limit) -> dict:
    return {
        "id": limit.limit_id,
        "projectId": limit.project_id,
        "workspaceId": auth.WORKSPACE_ID,
        "modifierRole": limit.modifier_role,
        "vCPUs": limit.vcpus,
        "createdAt": isotime(limit.created_at),
        "createdBy": auth.USER_ID,
        "updatedAt": isotime(limit.updated_at),
        "updatedBy": auth.USER_ID,
    }


def workspace_limit_view(limit: WorkspaceLimit) -> dict:
    return {
        "workspaceId": auth.WORKSPACE_ID,
        "vCPUs": limit.vcpus,
        "createdAt": isotime(limit.created_at),
        "createdBy": auth.USER_ID,
        "updatedAt": isotime(limit.updated_at),
        "updatedBy": auth.USER_ID,
    }


def retention_view(policy: RetentionPolicy, owner: dict) -> dict:
    """A TaskRetentionPolicy (owner ``{"projectId": ...}``).

    Or a WorkspaceTaskRetentionPolicy (owner ``{"workspaceId": ...}``).
    """
    return {
        **owner,
        "archiveAfter": policy.archive_after,
        "deleteAfter": policy.delete_after,
        "createdAt": isotime(policy.created_at),
    }


def gcp_clusters_view(regions: list[str], node_count: int) -> dict:
    """HTCClusterStatusResponse: one cluster per GCP region the emulator offers, sized like its scheduler."""
    return {
        "gcpProjectId": "htc-emulator",
        "clusters": [
            {
                "name": f"htc-{region.lower().replace('_', '-')}",
                "region": region,
                "status": "RUNNING",
                "version": "local",
                "subnetwork": "127.0.0.1/32",
                "autoscaling": "BALANCED",
                "nodePools": [
                    {
                        "name": f"{architecture.lower()}-pool",
                        "instanceType": MACHINE_TYPES[architecture]["machineType"],
                        "status": "RUNNING",
                        "version": "local",
                        "autoscaling": {"enabled": True, "minNodeCount": 0, "maxNodeCount": node_count},
                    }
                    for architecture in PROVIDER_ARCHITECTURES["GCP"]
                ],
            }
            for region in regions
            if provider_of(region) == "GCP"
        ],
    }


def metrics_text(metrics: Metrics) -> str:
    """Prometheus text exposition of the emulator's state: what ``GET /htc/metrics`` serves."""
    lines = [
        "# HELP htc_projects Projects in the workspace.",
        "# TYPE htc_projects gauge",
        f'htc_projects{{workspace="{auth.WORKSPACE_ID}"}} {metrics.projects}',
        "# HELP htc_tasks Tasks by lifecycle status.",
        "# TYPE htc_tasks gauge",
    ]
    lines += [
        f'htc_tasks{{lifecycle_status="{status}"}} {count}' for status, count in sorted(metrics.tasks_by_status.items())
    ]
    lines += ["# HELP htc_jobs Jobs by project and status.", "# TYPE htc_jobs gauge"]
    lines += [
        f'htc_jobs{{project="{project}",status="{status}"}} {count}'
        for (project, status), count in sorted(metrics.jobs_by_project_and_status.items())
    ]
    lines += [
        "# HELP htc_active_vcpus vCPUs held by active jobs (what the limits count).",
        "# TYPE htc_active_vcpus gauge",
    ]
    lines += [
        f'htc_active_vcpus{{project="{project}"}} {count}'
        for project, count in sorted(metrics.active_vcpus_by_project.items())
    ]
    return "\n".join(lines) + "\n"
