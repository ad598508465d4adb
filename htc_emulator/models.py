"""The platform's state: projects, repositories, tasks, jobs and their events.

Everything here is plain Python behind one lock; the HTTP layer
(:mod:`htc_emulator.responses`) validates input, calls these methods and
shapes the results. A job's status history is its list of events: the
current status, reason, failure code and timestamps are all read from it,
which is also how a delayed status refresh is imitated (see
:meth:`Backend.visible_time`).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from . import storage as storage_layout
from .policies import Policies
from .storage import Storage

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


class NotFound(Exception):
    """An id that names nothing (HTTP 404)."""


class InvalidRequest(Exception):
    """A request the platform would refuse (HTTP 400), naming the field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


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


class Executor(Protocol):
    """What the backend needs from the scheduler."""

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
    repositories: dict[str, dt.datetime] = field(default_factory=dict)

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

    @property
    def folder_path(self) -> str:
        return storage_layout.task_prefix(self.project_id, self.task_id)


@dataclass(frozen=True)
class JobEvent:
    event_id: str
    at: dt.datetime
    status: str
    reason: str | None = None
    failure_code: str | None = None
    container: dict | None = None
    user_cancelled: bool = False


@dataclass(frozen=True)
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

    def visible_events(self, as_of: dt.datetime | None) -> list[JobEvent]:
        """Events a client can see; a job always shows at least its first."""
        events = self.events[:]  # one atomic copy, read without the lock
        if as_of is None:
            return events
        return [e for e in events if e.at <= as_of] or events[:1]


class Backend:
    """All state, with the operations the API offers on it."""

    def __init__(
        self, storage: Storage, refresh_delay: float = 0.0, max_jobs_per_task: int = MAX_JOBS_PER_TASK
    ) -> None:
        if max_jobs_per_task < 1:
            raise ValueError("max_jobs_per_task must be at least 1")
        self.storage = storage
        self.refresh_delay = refresh_delay
        self.max_jobs_per_task = max_jobs_per_task
        self.started_at = now()
        self.lock = threading.RLock()
        self.projects: dict[str, Project] = {}
        self.tasks: dict[str, Task] = {}
        self.jobs: dict[str, Job] = {}
        self._task_jobs: dict[str, list[Job]] = {}
        self.executor: Executor | None = None
        self.policies = Policies()

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

    def create_repository(self, project_id: str, name: str) -> bool:
        """Create a repository; False if it already existed."""
        with self.lock:
            project = self.project(project_id)
            if name in project.repositories:
                return False
            project.repositories[name] = now()
            return True

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
        """A task that still has storage and jobs (not DELETED)."""
        task = self.task(project_id, task_id)
        if task.lifecycle_status == "DELETED":
            raise NotFound(f"task {task_id} was deleted")
        return task

    def list_tasks(self, project_id: str) -> list[Task]:
        with self.lock:
            self.project(project_id)
            return [t for t in self.tasks.values() if t.project_id == project_id]

    def update_task(self, project_id: str, task_id: str, lifecycle_status: str) -> Task:
        with self.lock:
            task = self.task(project_id, task_id)
            if task.lifecycle_status == "DELETED":
                raise InvalidRequest("taskId", "a DELETED task cannot be changed")
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
        """Mark the task DELETED, stop its jobs and delete its objects."""
        with self.lock:
            task = self.live_task(project_id, task_id)
            task.lifecycle_status = "DELETED"
            task.deleted_at = task.last_active_at = now()
        self.cancel(project_id, task_id, group=None, require_live=False)
        self.storage.revoke(task.folder_path)
        self.storage.delete_prefix(task.folder_path)
        return task

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
                    job.events.append(JobEvent(str(uuid.uuid4()), received, "SUBMITTED_TO_RESCALE", "Job received"))
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
        if not combinations:
            return region
        definition = batch["htcJobDefinition"]
        wanted = (region, definition.get("priority", "ON_DEMAND_PRIORITY"), definition.get("architecture", "X86"))
        for combination in combinations:
            derived = combination["derived"]
            if (
                (combination["region"], combination["priority"], derived["architecture"]) == wanted
                and definition.get("maxVCpus", 1) <= derived["vCPUs"]
                and definition.get("maxMemory", 128) <= derived["memory"]
            ):
                return region
        raise InvalidRequest(
            f"[{number}].htcJobDefinition",
            "no dimension combination of project {} allows region {}, priority {}, architecture {}".format(
                project.project_id, *wanted
            ),
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
            event = JobEvent(str(uuid.uuid4()), now(), status, reason, failure_code, container, user_cancelled)
            job.events.append(event)
            task = self.tasks.get(job.task_id)
            if task is not None:
                task.last_active_at = event.at
            return event

    def append_log(self, job: Job, message: str) -> None:
        job.logs.append(LogLine(now(), message))

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

    def cancel(self, project_id: str, task_id: str, group: str | None, *, require_live: bool = True) -> int:
        """Cancel every unfinished job of the task (or of one group in it).

        Queued jobs fail at once; running ones are killed and fail when
        their process ends. Returns how many jobs were affected.
        """
        to_kill, affected = [], 0
        with self.lock:
            (self.live_task if require_live else self.task)(project_id, task_id)
            for job in self._task_jobs[task_id]:
                if job.status in TERMINAL or job.cancel_requested or (group is not None and job.group != group):
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

    def status_counts(self, jobs: Iterable[Job], as_of: dt.datetime | None) -> Counter:
        counts: Counter = Counter({status: 0 for status in SUMMARY_STATUSES})
        for job in jobs:
            counts[job.visible_events(as_of)[-1].status] += 1
        return counts

    def groups(self, project_id: str, task_id: str) -> list[str]:
        return list(dict.fromkeys(j.group for j in self.task_jobs(project_id, task_id) if j.group is not None))
