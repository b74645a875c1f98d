"""The fast lane's fakes: no emulated cloud runs here, so the stack's secrets (AWS
Secrets Manager, stack/accountsecrets.py) are kept by an in-process fake of the client.
The end-to-end tests use the emulator's real Secrets Manager."""

from __future__ import annotations

import pytest


class FakeSecretsManager:
    """The calls stack/accountsecrets.py makes, with Secrets Manager's errors."""

    class exceptions:  # noqa: N801  (botocore's spelling)
        class ResourceNotFoundException(Exception):
            pass

        class ResourceExistsException(Exception):
            pass

    def __init__(self):
        self.secrets: dict[str, str] = {}

    def get_secret_value(self, SecretId):  # noqa: N803
        if SecretId not in self.secrets:
            raise self.exceptions.ResourceNotFoundException(SecretId)
        return {"SecretString": self.secrets[SecretId]}

    def create_secret(self, Name, SecretString, **_):  # noqa: N803
        if Name in self.secrets:
            raise self.exceptions.ResourceExistsException(Name)
        self.secrets[Name] = SecretString

    def delete_secret(self, SecretId, **_):  # noqa: N803
        if SecretId not in self.secrets:
            raise self.exceptions.ResourceNotFoundException(SecretId)
        del self.secrets[SecretId]

    def get_paginator(self, operation):
        assert operation == "list_secrets"
        fake = self

        class Pages:
            def paginate(self, Filters):  # noqa: N803
                prefix = Filters[0]["Values"][0]
                return [{"SecretList": [{"Name": n} for n in fake.secrets if n.startswith(prefix)]}]

        return Pages()


@pytest.fixture(autouse=True)
def secrets_manager(monkeypatch) -> FakeSecretsManager:
    from stack import accountsecrets

    fake = FakeSecretsManager()
    real_client = accountsecrets.aws.client
    monkeypatch.setattr(accountsecrets.aws, "client", lambda settings, service: (
        fake if service == "secretsmanager" else real_client(settings, service)))
    monkeypatch.setattr(accountsecrets, "_read", {})
    return fake


@pytest.fixture(autouse=True)
def account_id(monkeypatch):
    """The account id the state bucket's name holds (STS is not asked here): the
    emulator's, unless a test set another in the cache."""
    from stack import statebackend

    monkeypatch.setattr(statebackend, "account_id", lambda s: statebackend._accounts.get(
        (s.target, s.region, s.emulator_endpoint), "123456789012"))


@pytest.fixture(autouse=True)
def instance_memory(monkeypatch):
    """The memory of the instance type (EC2's DescribeInstanceTypes is not asked here):
    a t3.small's, as the emulator and AWS say."""
    from stack import capacity

    monkeypatch.setattr(capacity, "_memory_mib", lambda s: {"t3.small": 2048, "t3.medium": 4096}.get(s.instance_type, 8192))
    monkeypatch.setattr(capacity, "_memory", {})
