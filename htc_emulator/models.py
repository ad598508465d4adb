"""The platform's state: projects, repositories, tasks, jobs and their events, and the policies.

Everything here is plain Python behind one lock, and :class:`Backend` is its
one owner: every change of state is one of its methods, and no other module
takes its lock or reads its dictionaries. The HTTP layer
(:mod:`htc_emulator.routes`) validates input, calls one of these methods and
shapes the result with :mod:`htc_emulator.views`. A job's status history is
its list of events: the current status, reason, failure code and timestamps
are all read from it, which is also how the platform's status refresh is imitated
(see :meth:`Backend.visible_time`). How the platform behaves where it is awkward
(refresh ticks, best-effort cancel, jobs deleted after they end) is the
backend's :class:`~htc_emulator.platform_profile.PlatformProfile`.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import random
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from . import auth, job_logs, job_rights, storage_rights
from . import storage as storage_layout
from .auth import WORKSPACE_ID, Principal
from .errors import InvalidRequest, NotFound
from .log_pages import LogPages
from .platform_profile import IDEAL, PlatformProfile
from .policies import (
    WORKSPACE_REGIONS,
    Limit,
    Policies,
    RetentionPolicy,
    WorkspaceLimit,
    allows,
    offered_dimensions,
    workspace_dimensions,
)
from .storage import Storage
from .storage_rights import PresignedUpload, StorageGrant

STATUSES = (
    "SUBMITTED_TO_RESCALE",
    "SUBMITTED_TO_PROVIDER",
    "RUNNABLE",
    "STARTING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "POD_SUCCEEDED",
    "POD_FAILED",
)
# The statuses the emulator reports counts for (zeros included): the seven
# the spec lists on JobStatusSummary. The POD_* ones never occur here.
SUMMARY_STATUSES = STATUSES[:7]
PENDING = frozenset(STATUSES[:3])
TERMINAL = frozenset({"SUCCEEDED", "FAILED"})
# Statuses in which a job holds its vCPUs against the limits.
ACTIVE = frozenset(STATUSES[1:5])

DEFAULT_REGION = "AWS_US_EAST_2"
# So that no request can exhaust the emulator's memory: 100 batches of
# 1,000 jobs, the most one request may carry, fit exactly.
MAX_JOBS_PER_TASK = 100_000
CANCELLED_REASON = "Cancelled by user"
# The spec has no failure code for a user cancel; the event's
# userCancelledEvent flag is what marks it.
CANCELLED_FAILURE_CODE = "ErrorUnknownFailure"


def require_storable(field_name: str, value: object) -> None:
    """Refuse a value that could not be served back as UTF-8 JSON once stored.

    The HTTP layer checks text too; this guard keeps a stored value from
    breaking every later answer that includes it, whoever calls the model.
    """
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise InvalidRequest(field_name, f"cannot be stored and served back as JSON text: {exc}") from None


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# Event ids are random (version 4) UUIDs, as uuid.uuid4() makes them, from a generator seeded once from the
# system's: os.urandom releases the GIL, so each of a job's status events handed it to another thread.
_EVENT_IDS = random.Random()


def event_id() -> str:
    return str(uuid.UUID(int=_EVENT_IDS.getrandbits(128), version=4))


class Executor(Protocol):
    """What the backend needs from the scheduler."""

    concurrency: int

    def enqueue(self, jobs: list[Job]) -> None: ...

    def kill(self, job: Job) -> None: ...


@dataclass
class Project:
    project_id: str
    name: str
    description: str
    regions: list[str]
    region_settings: list[dict]
    created_at: dt.datetime
    organization_code: str | None = auth.ORGANIZATION_CODE
    # Repository name -> when the project created it.
    repositories: dict[str, dt.datetime] = field(default_factory=dict)
    # Pushed image (repository:tag) -> when the platform first saw it: its replication starts then.
    images_seen: dict[str, dt.datetime] = field(default_factory=dict)

    @property
    def folder_path(self) -> str:
        return f"projects/{self.project_id}/"

    @property
    def default_region(self) -> str:
        return self.regions[0]


@dataclass
class Task:
    task_id: str
    project_id: str
    name: str
    description: str
    created_at: dt.datetime
    last_active_at: dt.datetime
    lifecycle_status: str = "ACTIVE"
    archived_at: dt.datetime | None = None
    deleted_at: dt.datetime | None = None
    # Set, under the lock, when its deletion is decided: from then on every change is refused, and it
    # shows its last status until its storage is gone and it is DELETED.
    deleting: bool = False

    @property
    def folder_path(self) -> str:
        return storage_layout.task_prefix(self.project_id, self.task_id)

    @property
    def live(self) -> bool:
        """Whether it still takes changes, jobs and credentials (neither DELETED nor being deleted)."""
        return self.lifecycle_status != "DELETED" and not self.deleting


@dataclass(frozen=True)
class JobEvent:
    event_id: str
    at: dt.datetime
    status: str
    reason: str | None = None
    failure_code: str | None = None
    container: dict | None = None
    user_cancelled: bool = False


@dataclass(frozen=True, slots=True)
class LogLine:
    at: dt.datetime
    message: str


@dataclass
class Job:
    """One job instance ``<parentJobId>:<index>`` of a batch."""

    job_id: str
    parent_job_id: str
    index: int
    batch_size: int
    project_id: str
    task_id: str
    group: str | None
    job_name: str | None
    region: str
    definition: dict
    tags: list[dict]
    max_retries: int
    claims: dict[str, str]
    created_at: dt.datetime
    attempt: int = 0
    cancel_requested: bool = False
    events: list[JobEvent] = field(default_factory=list)
    logs: list[LogLine] = field(default_factory=list)
    log_bytes: int = 0  # what its log events cost, as job_logs counts them (past MAX_LOG_BYTES: spent)

    @property
    def status(self) -> str:
        return self.events[-1].status

    @property
    def vcpus(self) -> int:
        return self.definition.get("maxVCpus", 1)

    @property
    def timeout_seconds(self) -> int:
        # No timeout given: the spec's maximum (14 days) applies.
        return self.definition.get("execTimeoutSeconds", 1209600)

    def visible_status(self, as_of: dt.datetime | None) -> str:
        """The status a client sees: its last visible event's, without copying its events when all are visible."""
        if as_of is None:
            return self.events[-1].status
        return self.visible_events(as_of)[-1].status

    def visible_events(self, as_of: dt.datetime | None) -> list[JobEvent]:
        """Events a client can see; a job always shows at least its first."""
        events = self.events[:]  # one atomic copy, read without the lock
        if as_of is None:
            return events
        return [e for e in events if e.at <= as_of] or events[:1]


@dataclass(frozen=True)
class CancelRequest:
    """A cancel the platform has accepted (200) and applies at its next refresh tick."""

    task_id: str
    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class Metrics:
    """Counts of the platform's state at one instant (what ``GET /htc/metrics`` serves)."""

    projects: int
    tasks_by_status: Counter
    jobs_by_project_and_status: Counter
    active_vcpus_by_project: Counter


class Backend:
    """All state, with the operations the API offers on it.

    ``executor`` (the scheduler, which runs the jobs) is set by whoever
    assembles the emulator; without one, submitted jobs wait. ``profile`` is on the
    emulator's clock (:meth:`PlatformProfile.on_clock`): its durations are real seconds.
    """

    def __init__(
        self, storage: Storage, profile: PlatformProfile = IDEAL, max_jobs_per_task: int = MAX_JOBS_PER_TASK
    ) -> None:
        if max_jobs_per_task < 1:
            raise ValueError("max_jobs_per_task must be at least 1")
        if profile.status_refresh_seconds < 0:
            raise ValueError("the status refresh period must not be negative")
        self.storage = storage
        self.profile = profile
        self.refresh_delay = profile.status_refresh_seconds
        self.max_jobs_per_task = max_jobs_per_task
        self.started_at = now()
        self.lock = threading.RLock()
        self.projects: dict[str, Project] = {}
        self.tasks: dict[str, Task] = {}
        self.jobs: dict[str, Job] = {}
        self._task_jobs: dict[str, list[Job]] = {}
        self.executor: Executor | None = None
        self.policies = Policies()
        self._pending_cancels: list[CancelRequest] = []
        self.log_pages = LogPages()
        # Jobs in the order they reached a terminal status (the last status a job has): what retention deletes.
        self._ended: deque[Job] = deque()

    # --- time -----------------------------------------------------------

    def visible_time(self) -> dt.datetime | None:
        """The instant clients see job statuses as of, or None for live.

        With ``refresh_delay`` > 0 statuses change only at refresh ticks,
        like the platform's periodic (30 s) refresh.
        """
        if self.refresh_delay <= 0:
            return None
        elapsed = (now() - self.started_at).total_seconds()
        ticks = int(elapsed // self.refresh_delay)
        return self.started_at + dt.timedelta(seconds=ticks * self.refresh_delay)

    def seconds_to_next_tick(self) -> float:
        """How long until the next refresh tick (``refresh_delay`` > 0)."""
        elapsed = (now() - self.started_at).total_seconds()
        return self.refresh_delay - elapsed % self.refresh_delay

    # --- projects and repositories -----------------------------------------

    def create_project(self, name: str, description: str, regions: list[str], region_settings: list[dict]) -> Project:
        require_storable("projectName", name)
        require_storable("projectDescription", description)
        require_storable("regionSettings", region_settings)
        regions = list(
            dict.fromkeys(
                regions
                + [
                    s["computeSettings"]["computeRegion"]
                    for s in region_settings
                    if s["computeSettings"].get("computeRegion")
                ]
            )
        ) or [DEFAULT_REGION]
        project = Project(str(uuid.uuid4()), name, description, regions, region_settings, now())
        with self.lock:
            every = self.profile.null_organization_code_every
            if every and (len(self.projects) + 1) % every == 0:
                project.organization_code = None
            self.projects[project.project_id] = project
        return project

    def project(self, project_id: str) -> Project:
        try:
            return self.projects[project_id]
        except KeyError:
            raise NotFound(f"project {project_id} not found") from None

    def list_projects(self) -> list[Project]:
        with self.lock:
            return list(self.projects.values())

    def add_project_regions(self, project_id: str, regions: list[str]) -> Project:
        """Add regions to the project's (kept in order, no repeats)."""
        with self.lock:
            project = self.project(project_id)
            project.regions = list(dict.fromkeys(project.regions + list(regions)))
            return project

    def create_repository(self, project_id: str, name: str) -> tuple[Project, bool]:
        """Create a repository; the project, and False if it already existed."""
        with self.lock:
            project = self.project(project_id)
            if name in project.repositories:
                return project, False
            project.repositories[name] = now()
            return project, True

    def repositories(self, project_id: str) -> list[str]:
        """The names of the project's repositories, sorted."""
        with self.lock:
            return sorted(self.project(project_id).repositories)

    def repository_created_at(self, project_id: str, repository: str) -> dt.datetime | None:
        """When the project created this repository, if it did."""
        with self.lock:
            return self.project(project_id).repositories.get(repository)

    def image_first_seen(self, project_id: str, image_name: str) -> dt.datetime:
        """When the platform first saw this pushed image in the project (now, if this is the first time)."""
        with self.lock:
            return self.project(project_id).images_seen.setdefault(image_name, now())

    def has_repository(self, project_id: str, repository: str) -> bool:
        """Whether the project exists and created this repository (what its registry password may touch)."""
        with self.lock:
            project = self.projects.get(project_id)
            return project is not None and repository in project.repositories

    # --- storage ---------------------------------------------------------------

    def storage_grant(
        self, project_id: str, task_id: str | None, principal: Principal, region: str | None = None
    ) -> StorageGrant:
        """Credentials for one region (the project's default if None) of a project's or a live task's storage."""
        with self.lock:  # issued before a deletion can start revoking, or not at all
            project, task = self._storage_owner(project_id, task_id)
            region = region or project.default_region
            return storage_rights.grant(self.storage, project, task, principal, region, self._token_liveness(principal))

    def storage_grants(
        self, project_id: str, task_id: str | None, principal: Principal
    ) -> tuple[str, list[StorageGrant]]:
        """The project's default region, and credentials for each of its regions that has storage."""
        with self.lock:  # issued before a deletion can start revoking, or not at all
            project, task = self._storage_owner(project_id, task_id)
            regions = [r for r in project.regions if r in storage_rights.STORAGE_REGIONS]
            alive = self._token_liveness(principal)
            return project.default_region, [
                storage_rights.grant(self.storage, project, task, principal, region, alive) for region in regions
            ]

    def presigned_upload(self, project_id: str, task_id: str | None, file_path: str) -> PresignedUpload:
        """A URL that uploads one file into the project's shared files, or into a live task's folder."""
        with self.lock:  # issued before a deletion can start revoking, or not at all
            project, task = self._storage_owner(project_id, task_id)
            return storage_rights.presigned_upload(self.storage, project, task, file_path)

    def _token_liveness(self, principal: Principal) -> Callable[[], bool] | None:
        """For a job, what says its token (and so the storage credentials it gets) is still accepted."""
        return functools.partial(job_rights.job_is_live, principal, self) if principal.is_job else None

    def _storage_owner(self, project_id: str, task_id: str | None) -> tuple[Project, Task | None]:
        task = None if task_id is None else self.live_task(project_id, task_id)
        return self.project(project_id), task

    # --- tasks ---------------------------------------------------------------

    def create_task(self, project_id: str, name: str, description: str) -> Task:
        require_storable("taskName", name)
        require_storable("taskDescription", description)
        with self.lock:
            self.project(project_id)
            created = now()
            task = Task(str(uuid.uuid4()), project_id, name, description, created, created)
            self.tasks[task.task_id] = task
            self._task_jobs[task.task_id] = []
            return task

    def task(self, project_id: str, task_id: str) -> Task:
        self.project(project_id)
        task = self.tasks.get(task_id)
        if task is None or task.project_id != project_id:
            raise NotFound(f"task {task_id} not found in project {project_id}")
        return task

    def live_task(self, project_id: str, task_id: str) -> Task:
        """A task that still takes jobs and credentials (neither DELETED nor being deleted)."""
        task = self.task(project_id, task_id)
        if task.lifecycle_status == "DELETED":
            raise NotFound(f"task {task_id} was deleted")
        if task.deleting:
            raise NotFound(f"task {task_id} is being deleted")
        return task

    def list_tasks(self, project_id: str) -> list[Task]:
        with self.lock:
            self.project(project_id)
            return [t for t in self.tasks.values() if t.project_id == project_id]

    def update_task(self, project_id: str, task_id: str, lifecycle_status: str) -> Task:
        with self.lock:
            task = self.task(project_id, task_id)
            if not task.live:
                raise InvalidRequest("taskId", "a task that is DELETED or being deleted cannot be changed")
            if lifecycle_status == "DELETED":
                raise InvalidRequest("lifecycleStatus", "use DELETE to delete a task")
            if lifecycle_status == "ARCHIVED" and task.lifecycle_status != "ARCHIVED":
                if any(job.status not in TERMINAL for job in self._task_jobs[task_id]):
                    raise InvalidRequest("lifecycleStatus", "a task with unfinished jobs cannot be archived")
                task.archived_at = now()
            elif lifecycle_status == "ACTIVE":
                task.archived_at = None
            task.lifecycle_status = lifecycle_status
            task.last_active_at = now()
            return task

    def delete_task(self, project_id: str, task_id: str) -> Task:
        """Delete the task: no change to it is accepted from now on; it is DELETED once its storage is gone.

        A task the retention sweep is deleting is deleted again (every step is idempotent).
        """
        with self.lock:
            task = self.task(project_id, task_id)
            if task.lifecycle_status == "DELETED":
                raise NotFound(f"task {task_id} was deleted")
            task.deleting = True
        self._delete(task)
        return task

    def _delete(self, task: Task) -> None:
        """Carry out a deletion already decided (``task.deleting`` set under the lock).

        Its jobs are stopped, every credential that writes into its folder ends (revoking waits for the
        writes in flight, so each one lands before the objects are deleted, or is refused), its objects
        are deleted, and only then is it DELETED: a task seen DELETED has no storage left.
        """
        with self.lock:
            jobs = self._unfinished(task.task_id, None)
        self._cancel_jobs(jobs)
        self.storage.revoke(task.folder_path)
        self.storage.delete_prefix(task.folder_path)
        with self.lock:
            task.lifecycle_status = "DELETED"
            task.deleted_at = task.last_active_at = now()

    # --- jobs ----------------------------------------------------------------

    def submit(
        self, project_id: str, task_id: str, group: str | None, batches: list[dict]
    ) -> list[tuple[str, dt.datetime]]:
        """Create the jobs of each batch; return (parentJobId, time received) per batch.

        All or nothing: a request that would take the task past
        ``max_jobs_per_task`` is refused before any job exists.
        """
        require_storable("group", group)
        require_storable("body", batches)
        received = now()
        created: list[Job] = []
        result = []
        with self.lock:
            project = self.project(project_id)
            task = self.live_task(project_id, task_id)
            if task.lifecycle_status != "ACTIVE":
                raise InvalidRequest(
                    "taskId", f"jobs can only be submitted to an ACTIVE task, not {task.lifecycle_status}"
                )
            held, adding = len(self._task_jobs[task_id]), sum(batch.get("batchSize", 1) for batch in batches)
            if held + adding > self.max_jobs_per_task:
                raise InvalidRequest(
                    "batchSize",
                    f"a task holds at most {self.max_jobs_per_task} jobs; "
                    f"this one has {held} and the request adds {adding}",
                )
            placements = [self._placement(project, number, batch) for number, batch in enumerate(batches)]
            for batch, region in zip(batches, placements, strict=True):
                parent = str(uuid.uuid4())
                size = batch.get("batchSize", 1)
                for index in range(size):
                    job = Job(
                        job_id=f"{parent}:{index}",
                        parent_job_id=parent,
                        index=index,
                        batch_size=size,
                        project_id=project_id,
                        task_id=task_id,
                        group=group,
                        job_name=batch.get("jobName"),
                        region=region,
                        definition=batch["htcJobDefinition"],
                        tags=batch.get("tags", []),
                        max_retries=batch.get("retryStrategy", {}).get("maxRetries", 0),
                        claims={c["name"]: c["value"] for c in batch["htcJobDefinition"].get("claims", [])},
                        created_at=received,
                    )
                    job.events.append(JobEvent(event_id(), received, "SUBMITTED_TO_RESCALE", "Job received"))
                    self.jobs[job.job_id] = job
                    self._task_jobs[task_id].append(job)
                    created.append(job)
                result.append((parent, received))
            task.last_active_at = received
        if created and self.executor is not None:
            self.executor.enqueue(created)
        return result

    def _placement(self, project: Project, number: int, batch: dict) -> str:
        """The region a batch runs in; refused when the project's dimensions allow none of it.

        The first requested region the project has, else the project's default.
        With dimensions set, a job runs only on a combination that matches its
        region, priority and architecture and is big enough for it.
        """
        region = ([r for r in batch.get("regions", []) if r in project.regions] or project.regions)[0]
        combinations = self.policies.dimensions.get(project.project_id)
        definition = batch["htcJobDefinition"]
        if not combinations or any(allows(combination, region, definition) for combination in combinations):
            return region
        raise InvalidRequest(
            (number, "htcJobDefinition"),
            f"no dimension combination of project {project.project_id} allows region {region}, "
            f"priority {definition.get('priority', 'ON_DEMAND_PRIORITY')}, "
            f"architecture {definition.get('architecture', 'X86')}",
        )

    def admit(self, waiting: list[Job]) -> tuple[list[Job], list[Job]]:
        """Move waiting jobs on to SUBMITTED_TO_PROVIDER as far as the vCPU limits allow.

        A job counts against its project's limits (the smallest one) and the
        workspace limit from SUBMITTED_TO_PROVIDER until it ends. Returns
        (admitted, still waiting); cancelled jobs drop out.
        """
        with self.lock:
            waiting = [job for job in waiting if not job.cancel_requested and job.status == "SUBMITTED_TO_RESCALE"]
            policies = self.policies
            if not policies.limits and policies.workspace_limit is None:
                admitted, waiting = waiting, []
            else:
                admitted, waiting = self._within_limits(waiting)
            for job in admitted:
                self.transition(job, "SUBMITTED_TO_PROVIDER", "Submitted to provider")
            return admitted, waiting

    def _within_limits(self, waiting: list[Job]) -> tuple[list[Job], list[Job]]:
        usage: Counter = Counter()
        for job in self.jobs.values():
            if job.status in ACTIVE:
                usage[job.project_id] += job.vcpus
        workspace_cap = self.policies.workspace_limit.vcpus if self.policies.workspace_limit else None
        total = sum(usage.values())
        admitted, held = [], []
        for job in waiting:
            cap = self.policies.vcpu_cap(job.project_id)
            fits = (cap is None or usage[job.project_id] + job.vcpus <= cap) and (
                workspace_cap is None or total + job.vcpus <= workspace_cap
            )
            if fits:
                usage[job.project_id] += job.vcpus
                total += job.vcpus
                admitted.append(job)
            else:
                held.append(job)
        return admitted, held

    def job(self, project_id: str, task_id: str, job_id: str) -> Job:
        self.task(project_id, task_id)
        job = self.jobs.get(job_id)
        if job is None or job.task_id != task_id:
            raise NotFound(f"job {job_id} not found in task {task_id}")
        return job

    def task_jobs(self, project_id: str, task_id: str) -> list[Job]:
        with self.lock:
            self.task(project_id, task_id)
            return list(self._task_jobs[task_id])

    def find_jobs(
        self,
        project_id: str,
        task_id: str,
        *,
        group: str | None = None,
        job_ids: list[str] | None = None,
        status: str | None = None,
    ) -> tuple[list[Job], dt.datetime | None]:
        """The task's jobs that match every filter given, and the instant their statuses are seen as of.

        A parentJobId among ``job_ids`` selects every job of its batch; ``status``
        is the status a client sees (see :meth:`visible_time`).
        """
        as_of = self.visible_time()
        jobs = self.task_jobs(project_id, task_id)
        if group is not None:
            jobs = [j for j in jobs if j.group == group]
        if job_ids:
            wanted = set(job_ids)
            jobs = [j for j in jobs if j.job_id in wanted or j.parent_job_id in wanted]
        if status is not None:
            jobs = [j for j in jobs if j.visible_status(as_of) == status]
        return jobs, as_of

    def seen_job(self, project_id: str, task_id: str, job_id: str) -> tuple[Job, dt.datetime | None]:
        """A job, and the instant its status is seen as of."""
        return self.job(project_id, task_id, job_id), self.visible_time()

    def job_events(self, project_id: str, task_id: str, job_id: str) -> tuple[Job, list[JobEvent]]:
        """A job and the events a client can see, oldest first."""
        job = self.job(project_id, task_id, job_id)
        return job, job.visible_events(self.visible_time())

    def job_logs(self, project_id: str, task_id: str, job_id: str, *, newest_first: bool) -> list[LogLine]:
        """A job's log lines so far."""
        lines = self.job(project_id, task_id, job_id).logs[:]
        if newest_first:
            lines.reverse()
        return lines

    def job_log_page(
        self, project_id: str, task_id: str, job_id: str, token: str | None, page_size: int, *, newest_first: bool
    ) -> tuple[list[LogLine], str | None]:
        """One page of a job's log as CloudWatch serves it (:mod:`htc_emulator.log_pages`), and the next token."""
        lines = self.job_logs(project_id, task_id, job_id, newest_first=newest_first)
        return self.log_pages.page(job_id, lines, token, page_size, newest_first=newest_first)

    def transition(
        self,
        job: Job,
        status: str,
        reason: str | None = None,
        *,
        failure_code: str | None = None,
        container: dict | None = None,
        user_cancelled: bool = False,
    ) -> JobEvent:
        """Append a status event (the only way a job's status changes)."""
        with self.lock:
            event = JobEvent(event_id(), now(), status, reason, failure_code, container, user_cancelled)
            job.events.append(event)
            if status in TERMINAL and self.profile.job_retention_seconds:
                self._ended.append(job)
            task = self.tasks.get(job.task_id)
            if task is not None:
                task.last_active_at = event.at
            return event

    def append_logs(self, job: Job, messages: list[str]) -> None:
        """Add log events to the job's log, within its budget (:func:`htc_emulator.job_logs.within_budget`).

        Only the thread of the job's running attempt calls this, so the budget needs no lock.
        """
        at = now()
        for message in messages:
            kept, job.log_bytes = job_logs.within_budget(job.log_bytes, message)
            if kept is None:
                return
            job.logs.append(LogLine(at, kept))

    def advance(self, job: Job, status: str, reason: str) -> bool:
        """Move a queued job forward unless it was cancelled or finished meanwhile."""
        with self.lock:
            if job.cancel_requested or job.status in TERMINAL:
                return False
            self.transition(job, status, reason)
            return True

    def claim_for_start(self, job: Job) -> bool:
        """Move a queued job to STARTING; False if it was cancelled meanwhile."""
        with self.lock:
            if job.cancel_requested or job.status in TERMINAL:
                return False
            job.attempt += 1
            self.transition(job, "STARTING", f"Starting attempt {job.attempt}")
            return True

    def finish_attempt(
        self, job: Job, status: str, reason: str, *, failure_code: str | None = None, exit_code: int | None = None
    ) -> bool:
        """Record how an attempt ended; True if the job goes back to the queue."""
        container = None if exit_code is None else {"exitCode": exit_code, "reason": reason}
        with self.lock:
            if job.cancel_requested and status != "SUCCEEDED":
                self.transition(
                    job,
                    "FAILED",
                    CANCELLED_REASON,
                    failure_code=CANCELLED_FAILURE_CODE,
                    container=container,
                    user_cancelled=True,
                )
                return False
            if status == "FAILED" and job.attempt <= job.max_retries:
                self.transition(
                    job,
                    "RUNNABLE",
                    f"Retrying after attempt {job.attempt} failed: {reason}",
                    failure_code=failure_code,
                    container=container,
                )
                return True
            self.transition(job, status, reason, failure_code=failure_code, container=container)
            return False

    def cancel(self, project_id: str, task_id: str, group: str | None) -> int:
        """Accept a cancel of the task's (or one group's) unfinished jobs; returns how many it names.

        With the profile's best-effort cancel the request waits for the next refresh tick
        (:meth:`apply_pending_cancels`), and jobs may finish meanwhile; otherwise it is applied
        at once: queued jobs fail, running ones are stopped and fail when their process ends.
        """
        with self.lock:
            self.live_task(project_id, task_id)
            jobs = self._unfinished(task_id, group)
            if self.profile.best_effort_cancel:
                self._pending_cancels.append(CancelRequest(task_id, tuple(job.job_id for job in jobs)))
                return len(jobs)
        return self._cancel_jobs(jobs)

    def apply_pending_cancels(self) -> int:
        """Apply the cancels accepted since the last refresh tick to their jobs that have not ended; how many."""
        with self.lock:
            requests, self._pending_cancels = self._pending_cancels, []
            jobs = [self.jobs[job_id] for request in requests for job_id in request.job_ids if job_id in self.jobs]
        return self._cancel_jobs(jobs)

    def _unfinished(self, task_id: str, group: str | None) -> list[Job]:
        return [
            job
            for job in self._task_jobs[task_id]
            if job.status not in TERMINAL and (group is None or job.group == group)
        ]

    def _cancel_jobs(self, jobs: list[Job]) -> int:
        """Queued jobs fail as cancelled; running ones are stopped (SIGTERM, then SIGKILL after the grace period)."""
        to_kill, affected = [], 0
        with self.lock:
            for job in jobs:
                if job.status in TERMINAL or job.cancel_requested:
                    continue
                job.cancel_requested = True
                affected += 1
                if job.status in PENDING:
                    self.transition(
                        job, "FAILED", CANCELLED_REASON, failure_code=CANCELLED_FAILURE_CODE, user_cancelled=True
                    )
                else:
                    to_kill.append(job)
        if self.executor is not None:
            for job in to_kill:
                self.executor.kill(job)
        return affected

    def delete_ended_jobs(self, at: dt.datetime) -> int:
        """Delete the jobs that reached a terminal status ``job_retention_seconds`` before ``at``; how many."""
        kept_for = dt.timedelta(seconds=self.profile.job_retention_seconds)
        expired: dict[str, set[str]] = {}
        with self.lock:
            while self._ended and self._ended[0].events[-1].at + kept_for <= at:
                job = self._ended.popleft()
                del self.jobs[job.job_id]
                expired.setdefault(job.task_id, set()).add(job.job_id)
            for task_id, job_ids in expired.items():
                self._task_jobs[task_id] = [job for job in self._task_jobs[task_id] if job.job_id not in job_ids]
        return sum(map(len, expired.values()))

    # --- statistics ---------------------------------------------------------

    @staticmethod
    def status_counts(jobs: Iterable[Job], as_of: dt.datetime | None) -> Counter:
        """How many jobs are in each status as seen at ``as_of``; every summary status counted, zeros too."""
        counts: Counter = Counter({status: 0 for status in SUMMARY_STATUSES})
        for job in jobs:
            counts[job.visible_status(as_of)] += 1
        return counts

    def task_statistics(self, project_id: str, task_id: str) -> Counter:
        """The task's jobs counted by status (as clients see them)."""
        return self.status_counts(self.task_jobs(project_id, task_id), self.visible_time())

    def group_statistics(
        self, project_id: str, task_id: str, groups: list[str] | None = None
    ) -> list[tuple[str | None, Counter]]:
        """Per group (in order of first submission; None for jobs without one), its jobs counted by status.

        Only the groups named in ``groups``, when it names any.
        """
        as_of = self.visible_time()
        jobs = self.task_jobs(project_id, task_id)
        names = list(dict.fromkeys(j.group for j in jobs))
        if groups:
            names = [name for name in names if name in set(groups)]
        return [(name, self.status_counts((j for j in jobs if j.group == name), as_of)) for name in names]

    def groups(self, project_id: str, task_id: str) -> list[str]:
        return list(dict.fromkeys(j.group for j in self.task_jobs(project_id, task_id) if j.group is not None))

    def metrics(self) -> Metrics:
        """A consistent snapshot of the counts ``GET /htc/metrics`` serves."""
        with self.lock:
            jobs = list(self.jobs.values())
            tasks = list(self.tasks.values())
            projects = len(self.projects)
        active_vcpus: Counter = Counter()
        for job in jobs:
            if job.status in ACTIVE:
                active_vcpus[job.project_id] += job.vcpus
        return Metrics(
            projects=projects,
            tasks_by_status=Counter(task.lifecycle_status for task in tasks),
            jobs_by_project_and_status=Counter((job.project_id, job.status) for job in jobs),
            active_vcpus_by_project=active_vcpus,
        )

    def job_slots(self, workspace_id: str) -> int:
        """How many jobs the workspace runs at once (its clusters' node count)."""
        self._workspace(workspace_id)
        return self.executor.concurrency if self.executor is not None else 1

    # --- job tokens ---------------------------------------------------------------

    def token_subjects(self, task_id: str | None, job_id: str | None) -> tuple[Task | None, Job | None]:
        """The task and the job a job token names, where they exist (deleted tasks included)."""
        with self.lock:
            return self.tasks.get(task_id or ""), self.jobs.get(job_id or "")

    # --- policies: limits ------------------------------------------------------------

    def _workspace(self, workspace_id: str) -> None:
        if workspace_id != WORKSPACE_ID:
            raise NotFound(f"workspace {workspace_id} not found")

    def project_limits(self, project_id: str) -> list[Limit]:
        with self.lock:
            self.project(project_id)
            return self.policies.project_limits(project_id)

    def set_limit(self, project_id: str, role: str, vcpus: int) -> Limit:
        """Add the project's limit for ``role``, or overwrite the one it has."""
        with self.lock:
            self.project(project_id)
            return self.policies.set_limit(project_id, role, vcpus, now())

    def delete_limits(self, project_id: str) -> None:
        with self.lock:
            self.project(project_id)
            for limit in self.policies.project_limits(project_id):
                del self.policies.limits[limit.limit_id]

    def limit(self, project_id: str, limit_id: int) -> Limit:
        with self.lock:
            self.project(project_id)
            limit = self.policies.limits.get(limit_id)
            if limit is None or limit.project_id != project_id:
                raise NotFound(f"limit {limit_id} not found in project {project_id}")
            return limit

    def update_limit(self, project_id: str, limit_id: int, vcpus: int) -> Limit:
        with self.lock:
            limit = self.limit(project_id, limit_id)
            limit.vcpus, limit.updated_at = vcpus, now()
            return limit

    def delete_limit(self, project_id: str, limit_id: int) -> None:
        with self.lock:
            del self.policies.limits[self.limit(project_id, limit_id).limit_id]

    def workspace_limit(self, workspace_id: str) -> WorkspaceLimit:
        self._workspace(workspace_id)
        limit = self.policies.workspace_limit
        if limit is None:
            raise NotFound(f"workspace {workspace_id} has no resource limit")
        return limit

    # --- policies: dimensions -----------------------------------------------------------

    def dimensions(self, project_id: str) -> list[dict]:
        """The combinations the project's jobs may run on (none: no restriction)."""
        with self.lock:
            self.project(project_id)
            return self.policies.dimensions.get(project_id, [])

    def set_dimensions(self, project_id: str, wanted: list[dict]) -> list[dict]:
        """Restrict the project to the workspace's combinations that match ``wanted``; [] lifts every restriction."""
        chosen = offered_dimensions(wanted)
        with self.lock:
            self.project(project_id)
            self.policies.dimensions[project_id] = chosen
        return chosen

    def workspace_dimensions(self, workspace_id: str) -> list[dict]:
        self._workspace(workspace_id)
        return workspace_dimensions(WORKSPACE_REGIONS)

    # --- policies: task retention ----------------------------------------------------------

    def project_retention(self, project_id: str) -> RetentionPolicy:
        with self.lock:
            self.project(project_id)
            policy = self.policies.project_retention.get(project_id)
        if policy is None:
            raise NotFound(f"project {project_id} has no task retention policy (the workspace's applies)")
        return policy

    def set_project_retention(self, project_id: str, archive_after: int, delete_after: int) -> RetentionPolicy:
        policy = RetentionPolicy(archive_after, delete_after, now())
        with self.lock:
            self.project(project_id)
            self.policies.project_retention[project_id] = policy
        return policy

    def delete_project_retention(self, project_id: str) -> None:
        with self.lock:
            self.project(project_id)
            self.policies.project_retention.pop(project_id, None)

    def workspace_retention(self, workspace_id: str) -> RetentionPolicy:
        self._workspace(workspace_id)
        policy = self.policies.workspace_retention
        if policy is None:
            raise NotFound(f"workspace {workspace_id} has no task retention policy")
        return policy

    def set_workspace_retention(self, workspace_id: str, archive_after: int, delete_after: int) -> RetentionPolicy:
        self._workspace(workspace_id)
        policy = RetentionPolicy(archive_after, delete_after, now())
        with self.lock:
            self.policies.workspace_retention = policy
        return policy

    def apply_retention(self, at: dt.datetime, hour: dt.timedelta) -> None:
        """Archive and delete whatever the retention policies say is due at ``at``.

        The policy of a task's project applies, else the workspace's; ``hour`` is
        how long an hour of a policy lasts on the emulator's clock. A task is
        archived only once all its jobs have ended, as ``PATCH`` requires. Each
        deletion is decided under the lock, where a user's change is too: what
        comes first wins, and a task being deleted refuses every change.
        """
        to_delete = []
        with self.lock:
            for task in list(self.tasks.values()):
                policy = self.policies.retention_for(task.project_id)
                if policy is None or not task.live:
                    continue
                if (
                    task.lifecycle_status == "ACTIVE"
                    and policy.archive_due(task.last_active_at, at, hour)
                    and all(job.status in TERMINAL for job in self._task_jobs[task.task_id])
                ):
                    self.update_task(task.project_id, task.task_id, "ARCHIVED")
                elif task.lifecycle_status == "ARCHIVED" and policy.delete_due(task.archived_at, at, hour):
                    task.deleting = True
                    to_delete.append(task)
        for task in to_delete:
            self._delete(task)
