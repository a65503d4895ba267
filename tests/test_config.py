"""Launch options, the exposure guard, and persisted settings."""

import json

import pytest

from webui.app import main
from webui.config import ConfigError, SettingsStore, parse_auth, parse_options
from webui.errors import RequestError


def test_defaults_serve_only_this_computer():
    options = parse_options([])
    assert (options.server_name, options.port, options.exposed) == ("127.0.0.1", 7860, False)


@pytest.mark.parametrize("flag", ["--share", "--listen"])
def test_exposure_without_auth_refuses_to_start(flag, capsys):
    assert main([flag]) == 2
    err = capsys.readouterr().err
    assert "Refusing to start" in err and "--auth" in err and "--insecure-no-auth" in err


def test_exposure_with_auth_or_explicit_override_is_allowed(tmp_path):
    assert parse_options(["--listen", "--auth", "ann:secret"]).auth == (("ann", "secret"),)
    assert parse_options(["--share", "--insecure-no-auth"]).exposed
    logins = tmp_path / "logins.txt"
    logins.write_text("ann:one\nbob:two,cy:three\n")
    assert parse_options(["--listen", "--auth-file", str(logins)]).auth == (("ann", "one"), ("bob", "two"), ("cy", "three"))


@pytest.mark.parametrize("bad", ["ann", "ann:", ":pw"])
def test_bad_logins(bad):
    with pytest.raises(ConfigError, match="user:password"):
        parse_auth(bad, None)


def test_missing_auth_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        parse_auth(None, tmp_path / "nope")


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        parse_options(["--help"])
    text = capsys.readouterr().out
    for flag in ("--port", "--listen", "--share", "--auth", "--auth-file", "--models-dir", "--device", "--precision",
                 "--lowvram", "--medvram", "--api", "--enable-insecure-extension-access", "--theme", "--insecure-no-auth",
                 "--attention", "--attention-slice-size", "--offload", "--vae-tiling", "--vae-tile-size",
                 "--unet-precision", "--text-encoder-precision", "--vae-precision", "--no-half-vae",
                 "--channels-last", "--compile"):
        assert flag in text


def test_settings_persist_and_validate(tmp_path):
    path = tmp_path / "settings.json"
    store = SettingsStore(path)
    assert store.save({"preview_every": 5}) == ["Settings saved."]
    notes = store.save({"device": "cuda"})
    assert notes == ["Device (auto, cpu, cuda, cuda:N, mps): takes effect after a restart"]
    assert store.save({"precision": "fp16"}) == ["Settings saved."]  # the next generation reloads the model
    assert json.loads(path.read_text())["preview_every"] == 5
    assert SettingsStore(path).current.precision == "fp16"
    with pytest.raises(RequestError, match="preview_every: 500 is not allowed"):
        store.save({"preview_every": 500})
    with pytest.raises(RequestError, match="default_sampler"):
        store.save({"default_sampler": "Magic"})
    assert SettingsStore(path).current.preview_every == 5  # a refused save changes nothing


def test_unreadable_settings_fall_back_to_defaults(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text("{not json")
    assert SettingsStore(path).current.preview_every == 1


def test_the_rest_api_is_on_locally_and_only_on_request_when_exposed():
    assert parse_options([]).api_enabled
    assert not parse_options(["--listen", "--auth", "ann:pw"]).api_enabled
    assert parse_options(["--listen", "--auth", "ann:pw", "--api"]).api_enabled
    options = parse_options(["--api-auth", "bot:token-1,cli:token-2", "--queue-per-user", "3", "--max-pixels", "65536"])
    assert options.api_auth == (("bot", "token-1"), ("cli", "token-2"))
    assert (options.queue_per_user, options.max_pixels) == (3, 65536)
    with pytest.raises(ConfigError, match="--queue-size 0: expected a positive number"):
        parse_options(["--queue-size", "0"])
