"""Command line: ``python -m htc_emulator --help``."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading

from .faults import FaultInjector
from .server import running


def _image(value: str) -> tuple[str, str]:
    name, sep, dockerfile = value.partition("=")
    if not sep or not name or not dockerfile:
        raise argparse.ArgumentTypeError("expected NAME:TAG=DOCKERFILE")
    return name, dockerfile


def _kinds(value: str) -> list[str]:
    return [k.strip() for k in value.split(",") if k.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m htc_emulator",
        description="Serve a local emulator of the Rescale HTC API on 127.0.0.1 until interrupted.",
    )
    parser.add_argument("--port", type=int, default=0, help="API port (default 0: any free port)")
    parser.add_argument(
        "--api-key",
        help="API key to accept (default: $HTC_EMULATOR_API_KEY, else a random one); "
        "the environment variable keeps it out of the process list",
    )
    parser.add_argument("--token-lifetime", type=int, default=21600, help="bearer token lifetime, seconds")
    parser.add_argument("--concurrency", type=int, default=None, help="jobs run at once (default: CPU count)")
    parser.add_argument(
        "--image",
        type=_image,
        action="append",
        default=[],
        metavar="NAME:TAG=DOCKERFILE",
        help="register a local image (Dockerfile path relative to the project root); repeatable",
    )
    parser.add_argument("--docker", action="store_true", help="run jobs as real containers (needs a Docker engine)")
    parser.add_argument(
        "--ideal",
        action="store_true",
        help="the idealised emulator: none of the platform's rough edges (statuses at once, images READY "
        "at once, no start latency, plain log pages, cancel at once); default: behave as the platform does",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="the emulator's clock: the platform's delays (30 s status refresh, image replication, instance "
        "starts) and retention hours last this many times as long (e.g. 0.01: 30 s become 0.3 s)",
    )
    parser.add_argument(
        "--timeout-scale",
        type=float,
        help="multiply every job's execTimeoutSeconds and the stop grace period by this (default: --time-scale)",
    )
    parser.add_argument(
        "--refresh-delay",
        type=float,
        help="job statuses refresh only every this many real seconds (default: the profile's 30 s, scaled)",
    )
    parser.add_argument("--apiconfig", help="also write an apiconfig profile to this file (mode 0600)")
    parser.add_argument("--profile", default="default", help="apiconfig profile name (default: default)")
    faults = parser.add_argument_group("fault injection")
    faults.add_argument("--fault-target", choices=["api", "storage"], default="api")
    faults.add_argument("--fault-rate", type=float, help="fraction of requests that get a fault")
    faults.add_argument(
        "--fault-kinds",
        type=_kinds,
        default=["503"],
        help="kinds for --fault-rate: 429,500,503,slow,lost (storage: 500,503,slow)",
    )
    faults.add_argument("--fault-script", type=_kinds, help="exact sequence for the next requests, e.g. 429,500,ok")
    faults.add_argument("--fault-path", help="only requests whose path matches this regex")
    faults.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds on 429/503")
    faults.add_argument("--slow-seconds", type=float, default=1.0, help="delay of a 'slow' fault")
    faults.add_argument(
        "--lost-answer-seconds",
        type=float,
        default=60.0,
        help="a 'lost' fault's answer (the request is carried out) waits this long for the client to hang up, then 504",
    )
    faults.add_argument("--fault-seed", type=int, help="random seed for --fault-rate")
    return parser.parse_args(argv)


def build_faults(args: argparse.Namespace) -> FaultInjector:
    injector = FaultInjector(
        retry_after=args.retry_after,
        slow_seconds=args.slow_seconds,
        seed=args.fault_seed,
        lost_answer_seconds=args.lost_answer_seconds,
    )
    if args.fault_rate is not None:
        injector.set_rate(args.fault_rate, args.fault_kinds, target=args.fault_target, path=args.fault_path)
    if args.fault_script:
        injector.script(args.fault_script, target=args.fault_target, path=args.fault_path)
    return injector


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        injector = build_faults(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    # Both set explicitly: a process started in the background of a script inherits SIGINT as
    # ignored, and Python then installs no KeyboardInterrupt of its own, so Ctrl+C would do nothing.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with running(
            api_key=args.api_key or os.environ.get("HTC_EMULATOR_API_KEY"),
            token_lifetime=args.token_lifetime,
            concurrency=args.concurrency,
            images=dict(args.image),
            time_scale=args.time_scale,
            timeout_scale=args.timeout_scale,
            refresh_delay=args.refresh_delay,
            profile="ideal" if args.ideal else "platform",
            faults=injector,
            port=args.port,
            docker=args.docker,
        ) as emu:
            print("Rescale HTC emulator is running.")
            print(f"  API base URL : {emu.api_url}")
            print(f"  API key      : {emu.api_key}")
            print(f"  S3 endpoint  : {emu.s3_endpoint} (bucket {emu.bucket})")
            print(f"  behaves as   : {emu.profile.name} (clock x{emu.time_scale:g})")
            for name in emu.images.names():
                print(f"  image        : {name} <- {emu.images.get(name).dockerfile}")
            if args.apiconfig:
                path = emu.write_apiconfig(args.apiconfig, args.profile)
                print(f"  apiconfig    : {path} [{args.profile}]")
            print("For a shell:")
            for name, value in emu.env().items():
                print(f"export {name}={shlex.quote(value)}")
            print("Stop with Ctrl+C.", flush=True)
            stop.wait()
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
