"""Settings: environment parsing, validation of combinations, and the per-provider batch bounds."""

from __future__ import annotations

import hashlib
import math

import pytest
from pydantic import ValidationError

from app.loader import batch_bounds
from app.settings import Settings


def test_env_variables_and_lists(monkeypatch, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("from-file\n\n")
    monkeypatch.setenv("BERTSERVE_API_KEYS", " key-alpha, key-beta ,")
    monkeypatch.setenv("BERTSERVE_API_KEYS_FILE", str(keys))
    monkeypatch.setenv("BERTSERVE_CORS_ORIGINS", "https://x.example")
    monkeypatch.setenv("BERTSERVE_MAX_BATCH_SIZE", "8")
    s = Settings()
    assert s.key_digests("client") == [hashlib.sha256(k).digest() for k in (b"key-alpha", b"key-beta", b"from-file")]
    assert s.cors_origins == ["https://x.example"] and s.max_batch_size == 8
    assert "key-alpha" not in repr(s)  # keys are secrets: never printed


def test_keys_may_be_given_as_sha256_digests(monkeypatch, tmp_path):
    digest = hashlib.sha256(b"admin-secret").hexdigest()
    keys = tmp_path / "admin-keys"
    keys.write_text(f"sha256:{digest.upper()}\nplain-admin\n")
    monkeypatch.setenv("BERTSERVE_ADMIN_API_KEYS_FILE", str(keys))
    monkeypatch.setenv("BERTSERVE_API_KEYS", f"sha256:{hashlib.sha256(b'c').hexdigest()}")
    s = Settings()
    assert s.key_digests("admin") == [hashlib.sha256(b"admin-secret").digest(), hashlib.sha256(b"plain-admin").digest()]
    assert s.key_digests("client") == [hashlib.sha256(b"c").digest()]


@pytest.mark.parametrize(
    "env",
    [
        {"BERTSERVE_MAX_QUEUE_SIZE": "4", "BERTSERVE_MAX_CLIENT_BATCH_SIZE": "8"},
        {"BERTSERVE_SSL_CERTFILE": "/tmp/cert.pem"},
        {"BERTSERVE_API_KEYS_FILE": "/nonexistent/keys"},
        {"BERTSERVE_ADMIN_API_KEYS_FILE": "/nonexistent/keys"},
        {"BERTSERVE_API_KEYS": "sha256:abc"},  # a hashed key is 64 hex digits
        {"BERTSERVE_ADMIN_API_KEYS": "sha256:" + "g" * 64},
        {"BERTSERVE_ADMIN_API_KEYS": "k", "BERTSERVE_ADMIN_WITHOUT_KEY": "true"},  # one or the other
        {"BERTSERVE_PROVIDER": "tpu"},
        {"BERTSERVE_MAX_BATCH_SIZE": "0"},
    ],
)
def test_bad_combinations_are_refused(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_engine_layout(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert Settings(workers=2).engine_layout() == (4, 1)  # single-thread sessions, one per core of the share
    assert Settings(workers=16).engine_layout() == (1, 1)
    assert Settings(workers=2, intra_op_threads=2).engine_layout() == (2, 2)
    assert Settings(workers=1, engine_sessions=2).engine_layout() == (2, 4)
    assert Settings(workers=1, engine_sessions=1, intra_op_threads=3).engine_layout() == (1, 3)


def test_gpu_gets_larger_batch_bounds_unless_set():
    assert batch_bounds(Settings(), "cpu") == (32, 16384, 0.05)
    assert batch_bounds(Settings(), "cuda") == (128, 65536, math.inf)
    assert batch_bounds(Settings(max_batch_size=16, max_batch_padding=0.2), "cuda") == (16, 65536, 0.2)


KEY_VARIABLES = ("BERTSERVE_API_KEYS", "BERTSERVE_API_KEYS_FILE", "BERTSERVE_ADMIN_API_KEYS",
                 "BERTSERVE_ADMIN_API_KEYS_FILE")


@pytest.mark.parametrize(
    "name, value",
    [
        ("BERTSERVE_API_KEYS", ","),
        ("BERTSERVE_API_KEYS", ""),  # set, even to nothing, is present: refused; only unset means "no keys"
        ("BERTSERVE_ADMIN_API_KEYS", " , "),
        ("BERTSERVE_API_KEYS_FILE", ""),  # file contents, written below: an unpopulated Secret
        ("BERTSERVE_API_KEYS_FILE", "\n  \n# rotated out: key-old\n"),
        ("BERTSERVE_ADMIN_API_KEYS_FILE", "# comments only\n"),
    ],
)
def test_keys_given_but_holding_none_refuse_to_start(monkeypatch, tmp_path, name, value):
    """Fail closed: a keys setting or file that is present but yields no key is a mistake, not open routes."""
    for variable in KEY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    if name.endswith("_FILE"):
        (tmp_path / "keys").write_text(value)
        value = str(tmp_path / "keys")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=f"{name} .*(holds no key)"):
        Settings()
    with pytest.raises(ValidationError, match="holds no key"):  # in code too (create_app's settings)
        Settings(**{name.removeprefix("BERTSERVE_").lower(): value})


def test_unset_keys_leave_the_routes_open(monkeypatch):
    for variable in KEY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    s = Settings()
    assert s.key_digests("client") == [] and s.key_digests("admin") == []


def test_key_files_skip_blank_lines_and_comments(monkeypatch, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# client keys, rotated monthly\n\n  key-one  \n   # indented comment\nkey-two\n")
    monkeypatch.setenv("BERTSERVE_ADMIN_API_KEYS_FILE", str(keys))
    s = Settings()
    assert s.key_digests("admin") == [hashlib.sha256(b"key-one").digest(), hashlib.sha256(b"key-two").digest()]
    assert hashlib.sha256(b"# client keys, rotated monthly").digest() not in s.key_digests("admin")


@pytest.mark.parametrize(
    "env, line",
    [
        ({"BERTSERVE_MAX_QUEUE_SIZE": "4", "BERTSERVE_MAX_CLIENT_BATCH_SIZE": "8"},
         "bertserve: bad settings: BERTSERVE_MAX_QUEUE_SIZE must be at least BERTSERVE_MAX_CLIENT_BATCH_SIZE"),
        ({"BERTSERVE_API_KEYS": ","}, "bertserve: bad settings: BERTSERVE_API_KEYS is set but holds no key"),
        ({"BERTSERVE_MAX_BATCH_SIZE": "0"}, "bertserve: bad setting BERTSERVE_MAX_BATCH_SIZE: Input should be"),
    ],
)
def test_setting_errors_read_as_one_plain_line(monkeypatch, capsys, env, line):
    """What `bertserve serve` prints for a bad setting: one line naming the variables, without pydantic's
    "Value error," nor a made-up variable called "settings"."""
    from app.settings import settings_or_exit

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        settings_or_exit()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(line) and len(err.strip().splitlines()) == 1, err
    assert "Value error" not in err and "BERTSERVE_SETTINGS" not in err and "setting settings" not in err


def test_make_run_moves_the_grpc_port_too():
    """`make run PORT=9000` alone left gRPC on :8081: GRPC_PORT sets BERTSERVE_GRPC_PORT (prerequisites not built)."""
    import shutil
    import subprocess

    from tests.support.paths import ROOT

    if shutil.which("make") is None:
        pytest.skip("no make here")
    r = subprocess.run(["make", "-n", "-o", ".venv/.installed", "-o", "models/drug-review-sentiment/1/bertserve.json",
                        "run", "PORT=9000", "GRPC_PORT=9001"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "BERTSERVE_GRPC_PORT=9001 " in r.stdout and "--port 9000" in r.stdout, r.stdout
