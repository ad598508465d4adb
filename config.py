"""Read Rescale API credentials from the Rescale CLI's ``apiconfig`` file.

The file is an INI file with one section per profile::

    [default]
    apibaseurl = https://platform.rescale.com
    apikey = <your API key>
    # optional: htcapibaseurl = https://htc.rescale.com/api/v1

It lives at ``~/.config/rescale/apiconfig`` (``%USERPROFILE%\\.config\\rescale\\apiconfig``
on Windows). Environment variables override it:

* ``RESCALE_APICONFIG``: path of the file;
* ``RESCALE_PROFILE``: section to read instead of ``[default]``;
* ``RESCALE_API_KEY`` (or ``RESCALE_API_TOKEN``, as ``htcctl`` names it): the API key;
  with it, the file and the profile become optional;
* ``RESCALE_HTC_API_URL``: the HTC API base URL.

The API key is a secret: nothing here prints, logs or echoes it, not even in errors.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import stat
import warnings
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_PROFILE = "default"
DEFAULT_API_BASE_URL = "https://platform.rescale.com"
DEFAULT_HTC_API_URL = "https://htc.rescale.com/api/v1"
PLACEHOLDER = "<PROVIDE_VALUE>"
# Any value still wrapped in angle brackets is a template placeholder nobody filled in.
_PLACEHOLDER_RE = re.compile(r"^<[^<>]*>$")

_TEMPLATE = """\
# Rescale API credentials, read by the Rescale CLI and by this tutorial's config.py.
# Replace {placeholder} with the API key from your Rescale user profile (API section).
# Keep this file private (mode 0600) and out of every code repository.
[{profile}]
apibaseurl = {apibaseurl}
apikey = {placeholder}
# htcapibaseurl = {htcapibaseurl}
"""


class ConfigError(Exception):
    """The apiconfig file or the environment cannot provide usable settings."""


class InsecureConfigWarning(UserWarning):
    """The apiconfig file, which holds a secret, is readable by other users."""


def config_path(path: str | os.PathLike | None = None) -> Path:
    """Where the apiconfig file is: ``path``, else ``$RESCALE_APICONFIG``, else the CLI's default.

    Example: ``config.config_path()  # PosixPath('/home/me/.config/rescale/apiconfig')``
    """
    if path is not None:
        return Path(path)
    if os.environ.get("RESCALE_APICONFIG"):
        return Path(os.environ["RESCALE_APICONFIG"])
    # Path.home() is $HOME on Linux and macOS and %USERPROFILE% on Windows.
    return Path.home() / ".config" / "rescale" / "apiconfig"


def _profile_name(profile: str | None) -> str:
    return profile or os.environ.get("RESCALE_PROFILE") or DEFAULT_PROFILE


def _warn_if_shared(file: Path) -> None:
    # Windows ACLs don't map onto mode bits, so the check only means something on POSIX.
    if os.name != "posix":
        return
    mode = file.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(
            f"{file} holds your API key but is accessible to other users "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {file}",
            InsecureConfigWarning,
            stacklevel=3,
        )


def _env_key_name() -> str | None:
    """Which environment variable holds the API key, if one does."""
    return next((n for n in ("RESCALE_API_KEY", "RESCALE_API_TOKEN") if os.environ.get(n)), None)


def _read_section(profile: str | None, path, *, need_file: bool, need_profile: bool) -> dict[str, str]:
    """The profile's entries; ``{}`` when the file (or the profile in it) is absent and not needed."""
    file = config_path(path)
    name = _profile_name(profile)
    if not file.is_file():
        if not need_file:
            return {}
        raise ConfigError(
            f"Rescale API config file not found: {file}\n"
            "Create it with config.write_template() and put your API key in it, "
            "or set RESCALE_API_KEY, or point RESCALE_APICONFIG at an existing file."
        )
    _warn_if_shared(file)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(file, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        # configparser quotes the offending line, which may be the key itself; keep only its position.
        where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        raise ConfigError(f"{file} is not a valid INI file{where}") from None
    if not parser.has_section(name):
        if not need_profile:
            return {}
        known = ", ".join(parser.sections()) or "none"
        raise ConfigError(f"profile [{name}] not found in {file} (profiles in it: {known})")
    return {k: v.strip() for k, v in parser.items(name)}


def _check_value(value: str | None, what: str, source: str) -> str:
    if not value:
        raise ConfigError(f"{what} is missing or empty in {source}")
    if _PLACEHOLDER_RE.match(value):
        raise ConfigError(f"{what} in {source} is still a template placeholder; replace it with the real value")
    return value


def get_profile(profile: str | None = None, path: str | os.PathLike | None = None) -> tuple[str, str]:
    """Return ``(apibaseurl, apikey)`` for a profile of the apiconfig file, after env overrides.

    Example: ``_, api_key = config.get_profile()``
    """
    env_key_name = _env_key_name()
    # A key from the environment needs neither the file nor the profile; apibaseurl then defaults.
    section = _read_section(profile, path, need_file=env_key_name is None, need_profile=env_key_name is None)
    source = f"profile [{_profile_name(profile)}] of {config_path(path)}"
    if env_key_name:
        api_key = _check_value(os.environ[env_key_name], "the API key", f"${env_key_name}")
    else:
        api_key = _check_value(section.get("apikey"), "apikey", source)
    base_url = section.get("apibaseurl") or DEFAULT_API_BASE_URL
    _check_value(base_url, "apibaseurl", source)
    return base_url.rstrip("/"), api_key


def key_source(profile: str | None = None, path: str | os.PathLike | None = None) -> str:
    """Where ``get_profile`` takes the API key from, in words for an error message; never the key itself.

    Example: ``config.key_source()  # 'profile [default] of /home/me/.config/rescale/apiconfig'``
    """
    env_key_name = _env_key_name()
    if env_key_name:
        return f"${env_key_name}"
    return f"profile [{_profile_name(profile)}] of {config_path(path)}"


def htc_api_url(profile: str | None = None, path: str | os.PathLike | None = None) -> str:
    """The HTC API base URL: ``$RESCALE_HTC_API_URL``, else ``htcapibaseurl`` in the profile, else production.

    This is the one place that decides which host the tutorial talks to. It must be https://,
    except on the loopback interface (the local emulator).
    Example: ``api_url = config.htc_api_url()  # 'https://htc.rescale.com/api/v1'``
    """
    if os.environ.get("RESCALE_HTC_API_URL"):
        url, source = os.environ["RESCALE_HTC_API_URL"], "$RESCALE_HTC_API_URL"
    else:
        section = _read_section(profile, path, need_file=False, need_profile=_env_key_name() is None)
        url = section.get("htcapibaseurl") or DEFAULT_HTC_API_URL
        source = f"htcapibaseurl of profile [{_profile_name(profile)}] in {config_path(path)}"
    _check_value(url, "the HTC API URL", source)
    parts = urlsplit(url)
    # The API key travels to this URL: plain http only where it never leaves the machine (the emulator).
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"the HTC API URL from {source} must start with https:// (http:// is allowed only "
            f"for localhost, 127.0.0.0/8 and ::1), got http:// for host {parts.hostname!r}"
        )
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"the HTC API URL from {source} must start with https://, got {url!r}")
    return url.rstrip("/")


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def write_template(path: str | os.PathLike | None = None, profile: str = DEFAULT_PROFILE) -> Path:
    """Create an apiconfig file with a placeholder key, readable only by you (mode 0600).

    Refuses to overwrite an existing file. Example: ``config.write_template()``
    """
    file = config_path(path)
    file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = _TEMPLATE.format(
        profile=profile, apibaseurl=DEFAULT_API_BASE_URL, htcapibaseurl=DEFAULT_HTC_API_URL, placeholder=PLACEHOLDER
    )
    # O_EXCL: never clobber a file that may already hold a real key. The mode is set at
    # creation, so there is no moment when the file is readable by others.
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return file
