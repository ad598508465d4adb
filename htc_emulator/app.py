"""The application: the resource routers, the error handlers and the middleware, assembled.

A request flows through :func:`asgi_app`'s layers in this order: the clock's
announcement (a header on every answer, :func:`announce_time_scale`), the exchange
recorder (:mod:`htc_emulator.recorder`, when a session keeps its exchanges),
the fault injector (:mod:`htc_emulator.faults`), the bearer check
(:mod:`htc_emulator.routes.guard`), then FastAPI's routing to one route of
:mod:`htc_emulator.routes`, which calls the model (:class:`~htc_emulator.models.Backend`)
and shapes its answer with :mod:`htc_emulator.views`.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

from .errors import install_error_handlers
from .faults import FaultInjector
from .platform_profile import TIME_SCALE_HEADER
from .recorder import ExchangeRecorder
from .routes import API_PREFIX, auth, jobs, metrics, policies, projects, regions, statistics, storage, tasks
from .routes.body_limit import BodyLimitMiddleware
from .routes.dependencies import Services, get_principal
from .routes.guard import auth_middleware

# Every /htc/** route, by resource; the authentication routes are the only ones without a bearer token.
HTC_ROUTERS = (regions, projects, storage, tasks, jobs, statistics, policies, metrics)


def create_app(services: Services) -> FastAPI:
    """The FastAPI application, without the recorder, fault and bearer-check wrappers.

    Its ``/htc/**`` routes still check the bearer token themselves (the
    principal dependency), so the application is never open without them.
    """
    app = FastAPI(title="Rescale HTC API emulator", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    authenticated = [Depends(get_principal)]
    app.include_router(auth.router)  # the tutorial's root URL
    app.include_router(projects.registry_token_router, dependencies=authenticated)  # the tutorial's root URL
    app.include_router(auth.router, prefix=API_PREFIX)
    for module in HTC_ROUTERS:
        app.include_router(module.router, prefix=API_PREFIX, dependencies=authenticated)
    return app


def asgi_app(
    services: Services, faults: FaultInjector, recorder: ExchangeRecorder | None = None, time_scale: float = 1.0
):
    """What uvicorn serves: recorder, faults and bearer check around :func:`create_app`'s application,
    every answer saying how fast the emulator's clock runs."""
    served = faults.asgi(auth_middleware(create_app(services), services.tokens, services.backend))
    return announce_time_scale(recorder.asgi(served) if recorder is not None else served, time_scale)


def announce_time_scale(app, time_scale: float):
    """``app`` with the :data:`~htc_emulator.platform_profile.TIME_SCALE_HEADER` on every HTTP answer.

    One second of the platform lasts ``time_scale`` seconds here; clients that read the
    header scale the platform's periods (the 30 s refresh, minutes of cold start) by it.
    """
    header = (TIME_SCALE_HEADER.lower().encode(), repr(float(time_scale)).encode())

    async def announced(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await app(scope, receive, send_with_header)

    return announced
