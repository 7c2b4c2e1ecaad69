"""amldbg.core.secrets: the one set of masking rules, on the examples of issue 10."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from amldbg.core import secrets
from amldbg.core.secrets import MASK, is_secret_name, mask_env, mask_tree, mask_value

# A storage account key has the shape of this one: 64 random bytes in base64.
ACCOUNT_KEY = "Zm9vYmFyQkFaMTIzNDU2Nzg5MGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6QUJDREVGRw+/XyZ12345ab=="


@pytest.mark.parametrize(
    "name",
    [
        "AZUREML_ACCOUNT_KEY1",
        "AZUREML_DATASTORE_STORAGEKEY",
        "MYSQL_PWD",
        "PIP_INDEX_PASS",
        "AZURE_DEVOPS_PAT",
        "MLFLOW_TRACKING_PASSWORD",
        "SSH_KEY_PASSPHRASE",
        "AZURE_CREDENTIALS",
        "HF_TOKEN",
        "AZURE_CLIENT_SECRET",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "AZUREML_SAS",
        "http_auth",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["PWD", "OLDPWD", "PATH", "LD_LIBRARY_PATH", "AZUREML_RUN_ID", "TOKENIZERS_PARALLELISM", "PIP_KEYRING_PROVIDER"]
)
def test_names_that_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # A token in a URL's user part with no password.
        ("https://TOKEN123abc@pkgs.dev.azure.com/org/_packaging/feed/pypi/simple/",
         f"https://{MASK}@pkgs.dev.azure.com/org/_packaging/feed/pypi/simple/"),
        # A password containing "/" (and one containing "@").
        ("https://user:pa/ss/word@host.example/simple", f"https://{MASK}@host.example/simple"),
        ("https://user:p@ss@host.example", f"https://{MASK}@host.example"),
        # A JWT.
        ("eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl", MASK),
        ("Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl",
         f"Authorization: Bearer {MASK}"),
        # A SAS signature.
        ("https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=AbC%2Bdef%3D&se=2030",
         f"https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig={MASK}&se=2030"),
        # Connection-string segments.
        (f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={ACCOUNT_KEY};EndpointSuffix=core.windows.net",
         f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={MASK};EndpointSuffix=core.windows.net"),
        ("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=AbC+dEf/123=",
         f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={MASK}"),
        ("InstrumentationKey=00000000-1111-2222-3333-444444444444;Authorization=AAD",
         f"InstrumentationKey={MASK};Authorization=AAD"),
        ("BlobEndpoint=https://a.blob.core.windows.net/;SharedAccessSignature=sv=2022&sig=abc;X=1",
         f"BlobEndpoint=https://a.blob.core.windows.net/;SharedAccessSignature={MASK};X=1"),
        # A long base64 key on its own.
        (ACCOUNT_KEY, MASK),
    ],
)
def test_values_are_masked_by_shape(text: str, masked: str) -> None:
    assert mask_value(text) == masked
    assert mask_value(masked) == masked  # masking twice changes nothing


@pytest.mark.parametrize(
    "text",
    [
        "/mnt/azureml/cr/j/4b8e2c/exe/wd",
        "/usr/local/nvidia/lib64:/usr/local/cuda/lib64/stubs/ExtraLongFolderName/Abc123",
        "git+https://github.com/org/repo@v1.0",
        "0123456789abcdef0123456789abcdef01234567",  # a git commit
        "https://westeurope-5.in.applicationinsights.azure.com/",
        "step1_1705396321_7a1c",
    ],
)
def test_ordinary_values_are_kept(text: str) -> None:
    assert mask_value(text) == text


def test_masking_json_text_keeps_it_valid_json() -> None:
    document = {"url": "https://TOKEN@host/x", "key": ACCOUNT_KEY, "list": ["a=1;AccountKey=k\"q"]}
    text = json.dumps(document)
    masked = json.loads(mask_value(text))
    assert masked["url"] == f"https://{MASK}@host/x" and masked["key"] == MASK


def test_mask_env_and_mask_tree() -> None:
    env = {"AZUREML_ACCOUNT_KEY1": "short", "PIP_EXTRA_INDEX_URL": "https://TOK@h/simple", "RANK": "3"}
    assert mask_env(env) == {
        "AZUREML_ACCOUNT_KEY1": MASK, "PIP_EXTRA_INDEX_URL": f"https://{MASK}@h/simple", "RANK": "3"
    }
    tree = {"env": env, "paths": ["https://u:p/w@h"], "n": 1, "client_secret": "abc"}
    assert mask_tree(tree) == {
        "env": {"AZUREML_ACCOUNT_KEY1": MASK, "PIP_EXTRA_INDEX_URL": f"https://{MASK}@h/simple", "RANK": "3"},
        "paths": [f"https://{MASK}@h"], "n": 1, "client_secret": MASK,
    }


def test_write_private_creates_owner_only_files(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        target = tmp_path / "snap.json"
        secrets.write_private(target, "{}\n")
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        existing = tmp_path / "old.json"
        existing.write_text("old")
        existing.chmod(0o644)
        secrets.write_private(existing, "new")
        assert stat.S_IMODE(existing.stat().st_mode) == 0o600 and existing.read_text() == "new"
    finally:
        os.umask(old)


def test_core_secrets_imports_only_the_standard_library() -> None:
    source = Path(secrets.__file__).read_text(encoding="utf-8")
    assert "import amldbg" not in source and "from amldbg" not in source
