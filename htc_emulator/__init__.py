"""A local stand-in for the Rescale HTC API, faithful to its OpenAPI spec.

Real HTTP (FastAPI + uvicorn), real S3 (moto's server, behind a credential gate), real job
processes. Start one with::

    from htc_emulator import running

    with running(images={"opencv-htc-tutorial:v1": "docker/Dockerfile"}) as emu:
        emu.api_url, emu.api_key, emu.s3_endpoint, emu.env()

or from a shell with ``python -m htc_emulator``.
"""

from .faults import FaultInjector
from .recorder import ExchangeRecorder
from .server import Emulator, running

__all__ = ["Emulator", "ExchangeRecorder", "FaultInjector", "running"]
