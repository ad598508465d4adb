"""config.py: apiconfig parsing, profiles, environment overrides, bad files, permissions."""

import os
import stat
import warnings
from pathlib import Path

import pytest

import config

KEY = "0123456789abcdef0123456789abcdef01234567"
OTHER_KEY = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    # The session's emulator exports these; each test here sets only what it needs.
    for name in ("RESCALE_APICONFIG", "RESCALE_PROFILE", "RESCALE_API_KEY", "RESCALE_API_TOKEN", "RESCALE_HTC_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def apiconfig(tmp_path):
    return write(
        tmp_path / "apiconfig",
        f"""\
[default]
apibaseurl = https://platform.rescale.com/
apikey = {KEY}

[eu]
apibaseurl = https://eu.rescale.com
apikey = {OTHER_KEY}
htcapibaseurl = http://127.0.0.1:8123/api/v1/
""",
    )


def test_default_location_is_under_home(tmp_path):
    assert config.config_path() == tmp_path / "home" / ".config" / "rescale" / "apiconfig"


def test_default_profile_from_default_location(tmp_path):
    write(tmp_path / "home" / ".config" / "rescale" / "apiconfig", f"[default]\napikey = {KEY}\n")
    assert config.get_profile() == ("https://platform.rescale.com", KEY)


def test_default_profile_trailing_slash_stripped(apiconfig):
    assert config.get_profile(path=apiconfig) == ("https://platform.rescale.com", KEY)


def test_named_profile(apiconfig):
    assert config.get_profile("eu", path=apiconfig) == ("https://eu.rescale.com", OTHER_KEY)


def test_rescale_profile_env_selects_section(apiconfig, monkeypatch):
    monkeypatch.setenv("RESCALE_PROFILE", "eu")
    assert config.get_profile(path=apiconfig)[1] == OTHER_KEY


def test_explicit_profile_beats_env(apiconfig, monkeypatch):
    monkeypatch.setenv("RESCALE_PROFILE", "eu")
    assert config.get_profile("default", path=apiconfig)[1] == KEY


def test_rescale_apiconfig_env_selects_file(apiconfig, monkeypatch):
    monkeypatch.setenv("RESCALE_APICONFIG", str(apiconfig))
    assert config.config_path() == apiconfig
    assert config.get_profile()[1] == KEY


def test_api_key_env_overrides_file(apiconfig, monkeypatch):
    monkeypatch.setenv("RESCALE_API_KEY", "from-env")
    assert config.get_profile(path=apiconfig) == ("https://platform.rescale.com", "from-env")


def test_api_token_env_accepted_like_htcctl(apiconfig, monkeypatch):
    monkeypatch.setenv("RESCALE_API_TOKEN", "from-token-env")
    assert config.get_profile(path=apiconfig)[1] == "from-token-env"


def test_api_key_env_wins_over_api_token_env(monkeypatch):
    monkeypatch.setenv("RESCALE_API_TOKEN", "token-env")
    monkeypatch.setenv("RESCALE_API_KEY", "key-env")
    assert config.get_profile()[1] == "key-env"


def test_env_key_needs_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RESCALE_API_KEY", "from-env")
    assert config.get_profile(path=tmp_path / "absent") == ("https://platform.rescale.com", "from-env")


def test_missing_file_says_how_to_create_it(tmp_path):
    with pytest.raises(config.ConfigError) as err:
        config.get_profile(path=tmp_path / "absent")
    message = str(err.value)
    assert str(tmp_path / "absent") in message
    assert "write_template()" in message and "RESCALE_API_KEY" in message


def test_unknown_profile_lists_known_ones(apiconfig):
    with pytest.raises(config.ConfigError, match=r"profile \[prod\] not found.*default, eu"):
        config.get_profile("prod", path=apiconfig)


def test_unknown_profile_from_env(apiconfig, monkeypatch):
    monkeypatch.setenv("RESCALE_PROFILE", "nope")
    with pytest.raises(config.ConfigError, match=r"\[nope\]"):
        config.get_profile(path=apiconfig)


@pytest.mark.parametrize("body", ["[default]\napibaseurl = https://x\n", "[default]\napikey =\n"])
def test_missing_key(tmp_path, body):
    with pytest.raises(config.ConfigError, match="apikey is missing"):
        config.get_profile(path=write(tmp_path / "apiconfig", body))


@pytest.mark.parametrize("value", [config.PLACEHOLDER, "<your API key>"])
def test_placeholder_key_rejected(tmp_path, value):
    with pytest.raises(config.ConfigError, match="placeholder"):
        config.get_profile(path=write(tmp_path / "apiconfig", f"[default]\napikey = {value}\n"))


def test_placeholder_in_env_rejected(monkeypatch):
    monkeypatch.setenv("RESCALE_API_KEY", "<PROVIDE_VALUE>")
    with pytest.raises(config.ConfigError, match=r"placeholder"):
        config.get_profile()


def test_not_ini_and_key_not_echoed(tmp_path):
    bad = write(tmp_path / "apiconfig", f"apikey = {KEY}\n")
    with pytest.raises(config.ConfigError, match=r"not a valid INI file \(line 1\)") as err:
        config.get_profile(path=bad)
    assert KEY not in str(err.value)
    assert err.value.__suppress_context__


def test_key_never_in_error_messages(tmp_path):
    good = write(tmp_path / "apiconfig", f"[default]\napikey = {KEY}\n")
    for call in (lambda: config.get_profile("other", path=good), lambda: config.htc_api_url("other", path=good)):
        with pytest.raises(config.ConfigError) as err:
            call()
        assert KEY not in str(err.value)


def test_percent_sign_in_key_is_literal(tmp_path):
    # configparser's default interpolation would choke on '%'.
    assert config.get_profile(path=write(tmp_path / "apiconfig", "[default]\napikey = ab%cd\n"))[1] == "ab%cd"


@pytest.mark.skipif(os.name != "posix", reason="mode bits are POSIX")
def test_group_readable_file_warns(tmp_path):
    shared = write(tmp_path / "apiconfig", f"[default]\napikey = {KEY}\n", mode=0o644)
    with pytest.warns(config.InsecureConfigWarning, match="chmod 600") as record:
        assert config.get_profile(path=shared)[1] == KEY
    assert KEY not in str(record[0].message)


@pytest.mark.skipif(os.name != "posix", reason="mode bits are POSIX")
def test_private_file_does_not_warn(apiconfig):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config.get_profile(path=apiconfig)


def test_write_template_mode_and_contents(tmp_path):
    target = tmp_path / "new" / ".config" / "rescale" / "apiconfig"
    assert config.write_template(target) == target
    if os.name == "posix":
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with pytest.raises(config.ConfigError, match="placeholder"):
        config.get_profile(path=target)
    assert "[default]" in target.read_text()


def test_write_template_default_location_and_profile(tmp_path):
    created = config.write_template(profile="work")
    assert created == tmp_path / "home" / ".config" / "rescale" / "apiconfig"
    assert "[work]" in created.read_text()


def test_write_template_never_overwrites(apiconfig):
    before = apiconfig.read_text()
    with pytest.raises(FileExistsError):
        config.write_template(apiconfig)
    assert apiconfig.read_text() == before


def test_htc_api_url_default(tmp_path):
    assert config.htc_api_url(path=tmp_path / "absent") == "https://htc.rescale.com/api/v1"


def test_htc_api_url_from_profile(apiconfig):
    assert config.htc_api_url("eu", path=apiconfig) == "http://127.0.0.1:8123/api/v1"
    assert config.htc_api_url(path=apiconfig) == config.DEFAULT_HTC_API_URL


def test_htc_api_url_env_wins(apiconfig, monkeypatch):
    monkeypatch.setenv("RESCALE_HTC_API_URL", "http://localhost:9/api/v1/")
    assert config.htc_api_url("eu", path=apiconfig) == "http://localhost:9/api/v1"


def test_htc_api_url_rejects_non_http(monkeypatch):
    monkeypatch.setenv("RESCALE_HTC_API_URL", "htc.rescale.com/api/v1")
    with pytest.raises(config.ConfigError, match="must start with https://"):
        config.htc_api_url()


def test_key_not_printed(apiconfig, capsys):
    config.get_profile(path=apiconfig)
    out = capsys.readouterr()
    assert KEY not in out.out + out.err


@pytest.mark.parametrize(
    "url",
    [
        "http://htc.rescale.com/api/v1",
        "http://10.0.0.5:8000/api/v1",
        "http://localhost.example.com/api/v1",
        "http://[::2]/api/v1",
    ],
)
def test_htc_api_url_refuses_plain_http_beyond_loopback(url, monkeypatch):
    monkeypatch.setenv("RESCALE_HTC_API_URL", url)
    with pytest.raises(config.ConfigError, match=r"must start with https://.*only for localhost"):
        config.htc_api_url()


def test_htc_api_url_from_profile_refuses_plain_http(tmp_path):
    file = write(tmp_path / "apiconfig", f"[default]\napikey = {KEY}\nhtcapibaseurl = http://htc.example.com/api/v1\n")
    with pytest.raises(config.ConfigError, match=r"htcapibaseurl .* must start with https://"):
        config.htc_api_url(path=file)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8/api/v1",
        "http://127.8.9.10/api/v1",
        "http://localhost/api/v1",
        "http://[::1]:8/api/v1",
        "https://htc.example.com/api/v1",
    ],
)
def test_htc_api_url_allows_https_and_loopback_http(url, monkeypatch):
    monkeypatch.setenv("RESCALE_HTC_API_URL", url)
    assert config.htc_api_url() == url


def test_env_key_needs_no_profile_in_a_present_file(apiconfig, monkeypatch):
    monkeypatch.setenv("RESCALE_API_KEY", "from-env")
    assert config.get_profile("absent", path=apiconfig) == (config.DEFAULT_API_BASE_URL, "from-env")
    monkeypatch.setenv("RESCALE_PROFILE", "also-absent")
    assert config.get_profile(path=apiconfig) == (config.DEFAULT_API_BASE_URL, "from-env")
    assert config.htc_api_url(path=apiconfig) == config.DEFAULT_HTC_API_URL
    # A profile that is there still gives its settings.
    assert config.get_profile("eu", path=apiconfig)[0] == "https://eu.rescale.com"
    assert config.htc_api_url("eu", path=apiconfig) == "http://127.0.0.1:8123/api/v1"


def test_key_source_names_the_variable_or_the_profile_and_file_never_the_key(apiconfig, monkeypatch):
    assert config.key_source(path=apiconfig) == f"profile [default] of {apiconfig}"
    monkeypatch.setenv("RESCALE_PROFILE", "eu")
    assert config.key_source(path=apiconfig) == f"profile [eu] of {apiconfig}"
    monkeypatch.setenv("RESCALE_API_TOKEN", KEY)
    assert config.key_source(path=apiconfig) == "$RESCALE_API_TOKEN"
    monkeypatch.setenv("RESCALE_API_KEY", OTHER_KEY)
    assert config.key_source(path=apiconfig) == "$RESCALE_API_KEY"
    assert config.get_profile(path=apiconfig)[1] == OTHER_KEY
