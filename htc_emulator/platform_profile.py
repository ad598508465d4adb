"""The platform's rough edges: what the real HTC platform does where it is awkward, each with its public source.

:data:`PLATFORM` (the default of :func:`htc_emulator.running`, of ``python -m
htc_emulator``, of ``make run``, ``make lab``, the test session and nbval) makes the
emulator behave as the platform does; :data:`IDEAL` (``running(profile="ideal")``,
``--ideal``) is the kind emulator benchmarks measure against: statuses at once,
images READY at once, no start latency, every cancel at once, nothing deleted.

Durations are the platform's, in seconds of its clock; the emulator runs them on its
scaled clock (``time_scale``: 0.01 makes the 30 s refresh 0.3 s), through
:meth:`PlatformProfile.on_clock`, and says so to clients in the
:data:`TIME_SCALE_HEADER` of every answer, so that they can scale their own waits.

Sources (where a row cites one, it is checked there):

- **H**: Rescale's ``htc-cli`` (github.com/rescale-labs/htc-cli, MIT), its tests and
  the patches it applies to the production spec (``v2/api/swagger.jsonnet``);
- **P**: Rescale's ``rescalehtc`` 1.1.0 package (PyPI), under ``src/rescalehtc/``;
- **S**: the original Rescale HTC tutorial, written against the real platform;
- **spec**: ``htc_emulator/openapi/htc-openapi.json``, its operations and the dated
  changelog in its ``info.description``;
- **AWS**: AWS Batch, the platform's AWS provider: its user guide (``job_states.html``) and API
  reference (``API_JobTimeout.html``, ``API_JobDetail.html``), under docs.aws.amazon.com/batch/latest/.

Behaviours the platform has in every profile (they cost no time), also with sources:

- a job's timeout (``execTimeoutSeconds``) counts from its attempt's ``startedAt``, when the
  job went from STARTING to RUNNING, that is once its container runs: the image's pull and the
  container's create and start are not part of it (AWS ``API_JobTimeout.html``,
  ``attemptDurationSeconds``: "measured from the job attempt's startedAt timestamp";
  ``API_JobDetail.html``, ``startedAt``: "when the job transitioned from the STARTING state to
  the RUNNING state"): :meth:`htc_emulator.scheduler.Scheduler._execute` starts the clock once
  the engine has started the container (or the process runs);
- user-defined job ``claims`` appear in the job's JWT as ``userDefined_<name>``
  (P ``bearer_token.py:31-44`` ``get_user_claims``; P ``htcjobs.py:486``, the ``claims``
  parameter: "the name given here is prefixed by userDefined\\_ in the actual JWT"):
  :data:`USER_CLAIM_PREFIX`, applied by :meth:`htc_emulator.auth.TokenAuthority.job_token`;
- ``GET /auth/token`` also takes ``Authorization: Refresh <RESCALE_HTC_REFRESH_TOKEN>``
  (P ``internals/authenticate.py:104-113``; P ``api.py:54-58``). rescalehtc reads that
  variable "in a non-interactive environment (e.g. in a container)" (P
  ``htcsession.py:29-35``), so the emulator puts one into every job's environment
  (inferred: the spec's list of injected variables does not name it), and exchanges it
  for a fresh job token while the job lives: :mod:`htc_emulator.auth`.

Not modelled (the README says so): re-pushing a tag can run the previous image for a
while (P ``container_registry.py:73-75``); rate limits (none are documented).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# The header every answer carries: how many real seconds one second of the platform lasts here.
TIME_SCALE_HEADER = "HTC-Emulator-Time-Scale"
USER_CLAIM_PREFIX = "userDefined_"
DAY = 86400.0


@dataclass(frozen=True)
class PlatformProfile:
    """How the platform behaves where it is awkward; 0 / False / None turns a behaviour off."""

    name: str
    # Job statuses (and the counts and events built from them) change only at refresh ticks.
    # S :392 ("Job statuses are refreshed every 30 seconds"); P htcjobs.py:121-124, :182-184
    # ("The API never updates more than every 30 seconds anyway").
    status_refresh_seconds: float
    # After a push (or, for an image registered with the emulator, after the project creates
    # its repository) the image's GET answers 404 "If the image was pushed recently, try again
    # at a later time" for image_unknown_seconds, then PENDING for image_pending_seconds, then
    # READY. spec GET .../container-registry/images/{imageName} (description: PENDING "while
    # the image is being replicated"; its 404 example); changelog 2024-10-15 (404 instead of
    # PENDING for images not there yet). The durations are not published: rescalehtc polls
    # every 10 s for up to 5 min (P htcjobs.py:678-698, constants.py:27-29); these make a
    # client polling at the refresh period see a 404 and a PENDING before READY.
    image_unknown_seconds: float
    image_pending_seconds: float
    # A batch whose imageName is unknown or not READY in the project's registry is refused at
    # submit: 400 naming imageName. changelog 2022-07-08 ("validation for image name during
    # job submission"), 2024-10-07; P container_registry.py:186-192 ("Attempting to start a job
    # with an image in PENDING state causes a HtcException during job submission").
    images_checked_at_submit: bool
    # With a Docker engine, a project's registry holds what was pushed to it and nothing else:
    # an image registered with the emulator (``--image``) does not count there. S :226-275
    # (repository, token, docker login, push, then the images list); P container_registry.py
    # push_image. Without an engine there is no registry to push to, and registered images
    # stand for images already pushed.
    registry_holds_pushed_images_only: bool
    # A job waits for an instance and its image: RUNNABLE while an instance starts (cold: the
    # slot ran nothing for instance_idle_seconds, or never), STARTING while the image is pulled
    # onto an instance that has not run it yet. AWS job_states.html (RUNNABLE: "started as soon
    # as sufficient resources are available"; STARTING: "container initiation operations ...
    # After the container image is pulled"). Durations are not published: minutes for a cold
    # EC2 instance, tens of seconds for a pull of the tutorial's 0.5 GB image.
    instance_start_seconds: float
    instance_idle_seconds: float
    image_pull_seconds: float
    # Log pages as CloudWatch serves them: opaque tokens, pages that are empty but carry `next`,
    # the last page without `next`. H v2/commands/job/logs_test.go:138-190
    # (TestLogs_AwsBugEmptyPagesWithToken: two empty pages with tokens, then the lines); spec
    # pageIndex is a string; S :659 and H job/logs.go (clients stop when `next` is absent).
    cloudwatch_log_pages: bool
    # Cancel is best effort and its answer is 200 all the same: the request is applied at the
    # next refresh tick; jobs still queued then fail as cancelled, running ones are stopped as
    # `docker stop` stops a container (SIGTERM, SIGKILL after the grace period) and keep their
    # outcome if they end within it, and jobs that finished meanwhile keep theirs. spec POST
    # .../jobs/cancel ("a 200 response status code does not mean all jobs were cancelled");
    # changelog 2024-08-14 (cancelled jobs get a status update).
    best_effort_cancel: bool
    # HTCProject.organizationCode is null for some projects (here: every second one created).
    # H v2/api/swagger.jsonnet:487-495 ("sometimes it's null and then we fail at runtime").
    null_organization_code_every: int
    # Jobs are deleted automatically this long after they reach a terminal status.
    # spec changelog 2024-11-05 ("Automatically delete jobs sixty days after they reach a
    # terminal state", ENK-2137).
    job_retention_seconds: float
    # Storage tokens carry storagePath (the original tutorial reads it, S :480-489); the
    # production spec's StorageAccessToken has no such property. Both named profiles send it;
    # False leaves it out, as the spec reads, for clients that must work either way.
    storage_path_in_tokens: bool = True

    def on_clock(self, time_scale: float) -> PlatformProfile:
        """This profile with every duration in real seconds on a clock ``time_scale`` times as fast."""
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        durations = {
            f.name: getattr(self, f.name) * time_scale for f in dataclasses.fields(self) if f.name.endswith("_seconds")
        }
        return dataclasses.replace(self, **durations)

    @property
    def image_ready_after(self) -> float:
        return self.image_unknown_seconds + self.image_pending_seconds


PLATFORM = PlatformProfile(
    name="platform",
    status_refresh_seconds=30.0,
    image_unknown_seconds=30.0,
    image_pending_seconds=60.0,
    images_checked_at_submit=True,
    registry_holds_pushed_images_only=True,
    instance_start_seconds=120.0,
    instance_idle_seconds=600.0,
    image_pull_seconds=30.0,
    cloudwatch_log_pages=True,
    best_effort_cancel=True,
    null_organization_code_every=2,
    job_retention_seconds=60 * DAY,
)

IDEAL = PlatformProfile(
    name="ideal",
    status_refresh_seconds=0.0,
    image_unknown_seconds=0.0,
    image_pending_seconds=0.0,
    images_checked_at_submit=False,
    registry_holds_pushed_images_only=False,
    instance_start_seconds=0.0,
    instance_idle_seconds=0.0,
    image_pull_seconds=0.0,
    cloudwatch_log_pages=False,
    best_effort_cancel=False,
    null_organization_code_every=0,
    job_retention_seconds=0.0,
)

PROFILES = {profile.name: profile for profile in (PLATFORM, IDEAL)}


def profile_named(profile: str | PlatformProfile) -> PlatformProfile:
    """A profile given by name (``"platform"``, ``"ideal"``) or as itself."""
    if isinstance(profile, PlatformProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}") from None
