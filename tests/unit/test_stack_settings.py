"""The team stack's settings without servers: secrets, env files, the git service's auth check.

(tests/stack/test_stack.py starts the stack for real; these are the cheap parts around it.)
"""
import base64
import dataclasses
import json
import shutil

from stack.git_http import authorized
from stack.settings import CLIENT_ENV_NAMES, SECRET_NAMES, TLS_FILES, Stack, env_lines, load_secrets, read_env_file


def stack_in(folder) -> Stack:
    return dataclasses.replace(Stack.from_params(), state=folder / ".stack")


def test_an_older_secrets_file_gets_the_new_names_and_keeps_its_own(tmp_path):
    stack = stack_in(tmp_path)
    stack.state.mkdir()
    older = {"postgres_password": "pg-kept", "s3_access_key": "VAEKEPT", "s3_secret_key": "s3-kept"}
    stack.secrets_file.write_text(json.dumps(older))
    stack.secrets_file.chmod(0o600)
    secrets = load_secrets(stack)
    assert set(secrets) == set(SECRET_NAMES) and {k: secrets[k] for k in older} == older
    assert len(set(secrets.values())) == len(secrets)                       # each one made on its own
    assert load_secrets(stack) == secrets == json.loads(stack.secrets_file.read_text())
    assert stack.secrets_file.stat().st_mode & 0o077 == 0


def test_a_kit_env_file_round_trips_and_its_paths_follow_the_copied_folder(tmp_path):
    stack = stack_in(tmp_path)
    kit = tmp_path / "kit with space"
    kit.mkdir()
    env = {"VAE_STACK_KIT": str(kit), **stack.client_env(load_secrets(stack), tls_dir=kit / "tls")}
    assert set(env) == {"VAE_STACK_KIT", *CLIENT_ENV_NAMES}
    (kit / "env").write_text(env_lines(env, export=False))
    assert read_env_file(kit / "env") == env
    moved = tmp_path / "elsewhere" / "kit"
    shutil.copytree(kit, moved)
    again = read_env_file(moved / "env")
    assert again["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == str(moved / "tls" / TLS_FILES["ca"])
    assert again["VAE_STACK_KIT"] == str(moved) and again["VAE_STACK_GIT_URL"] == env["VAE_STACK_GIT_URL"]


def test_the_git_service_admits_exactly_its_credentials():
    expected = b"vae:right-password"

    def basic(pair: bytes) -> str:
        return "Basic " + base64.b64encode(pair).decode()
    assert authorized(basic(expected), expected)
    refused = [None, "", basic(b"vae:wrong"), basic(b"vae:right-password2"), basic(b"other:right-password"),
               "Bearer " + base64.b64encode(expected).decode(), "Basic %%%not-base64"]
    assert [header for header in refused if authorized(header, expected)] == []
