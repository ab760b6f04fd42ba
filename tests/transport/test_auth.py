"""Authentication against real registries: Geo-style JWTs, the token flow, basic."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import bcrypt
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from registry_replication.transport import upload
from registry_replication.transport.auth import repository_scope
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import RegistryConfig
from registry_replication.transport.errors import RegistryAuthError, RegistryUnavailableError
from registry_replication.transport.tokens import JwtAuth, libtrust_key_id
from replication_harness import images
from replication_harness.keys import generate_key_pair
from replication_harness.registry import GITLAB_SERVICE
from replication_harness.servers import FaultProxy, TokenService


def test_kid_is_libtrust_key_id(keys):
    cert = x509.load_pem_x509_certificate(keys.cert_path.read_bytes())
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    kid = libtrust_key_id(cert.public_key())
    assert kid == ":".join(b32[i : i + 4] for i in range(0, 48, 4))
    assert len(kid.split(":")) == 12


def test_minted_token_claims(keys):
    auth = JwtAuth(
        keys.private_key_pem,
        service="container_registry",
        ttl_seconds=300,
        certificate_pem=keys.certificate_pem,
    )
    token = auth.mint([repository_scope("group/app", "pull"), "registry:catalog:*"])
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["kid"] == auth.key_id and len(header["x5c"]) == 1
    claims = jwt.decode(
        token, _public_pem(keys), algorithms=["RS256"], audience="container_registry"
    )
    assert claims["iss"] == "gitlab-issuer"
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] == claims["iat"]
    assert claims["jti"]
    assert claims["access"] == [
        {"type": "repository", "name": "group/app", "actions": ["pull"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]


def test_token_is_cached_per_scope_and_renewed_before_expiry(keys):
    now = [1_000_000.0]
    auth = JwtAuth(keys.private_key_pem, service="s", ttl_seconds=100, clock=lambda: now[0])
    first = auth.header(["repository:a:pull"])
    assert auth.header(["repository:a:pull"]) == first
    assert auth.header(["repository:b:pull"]) != first
    now[0] += 85  # inside the last 20% of the lifetime
    assert auth.header(["repository:a:pull"]) != first


def _public_pem(keys):
    cert = x509.load_pem_x509_certificate(keys.cert_path.read_bytes())
    return cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_primary_accepts_minted_pull_token(primary, primary_writer, primary_reader):
    images.push(primary_writer, "group/sub/app", images.ImageFactory().make(), ["1.0"])
    assert primary_reader.tags("group/sub/app") == ["1.0"]
    assert list(primary_reader.catalog()) == ["group/sub/app"]
    assert primary_reader.transport.auth.kind == "jwt"


def test_kid_alone_identifies_the_key(primary, primary_writer):
    """Without x5c, distribution 2.8 finds the key by its libtrust key id."""
    images.push(primary_writer, "app", images.ImageFactory().make(), ["v1"])
    config = RegistryConfig.from_connection(primary.connection(certificate_path=None))
    assert config.certificate is None
    with RegistryClient(config) as client:
        assert client.tags("app") == ["v1"]


def test_token_signed_by_another_key_is_refused(primary, primary_writer, tmp_path):
    images.push(primary_writer, "app", images.ImageFactory().make(), ["v1"])
    stranger = generate_key_pair(tmp_path / "stranger")
    config = RegistryConfig.from_connection(
        primary.connection(private_key_path=str(stranger.key_path), certificate_path=None)
    )
    with RegistryClient(config) as client, pytest.raises(RegistryAuthError) as refused:
        client.tags("app")
    message = str(refused.value)
    assert refused.value.status == 401 and refused.value.code == "UNAUTHORIZED"
    assert client.transport.auth.key_id in message and "rootcertbundle" in message
    assert "[invalid_token]" in message and "app" in message
    assert stranger.private_key_pem.splitlines()[1] not in message
    sent = client.transport.auth.header(["repository:app:pull"]).removeprefix("Bearer ")
    assert sent.split(".")[2] not in message  # the token's signature never reaches an error


def test_expired_token_is_refused(primary, primary_writer, keys):
    images.push(primary_writer, "app", images.ImageFactory().make(), ["v1"])
    late = JwtAuth(
        keys.private_key_pem,
        service=GITLAB_SERVICE,
        ttl_seconds=300,
        clock=lambda: time.time() - 3600,
    )
    with RegistryClient(primary.client_config(), auth=late) as client:
        with pytest.raises(RegistryAuthError) as refused:
            client.tags("app")
    assert "expired" in str(refused.value)
    assert refused.value.repository == "app"


def test_token_lacking_the_action_is_refused(primary, keys):
    class PullOnly(JwtAuth):
        def authorization(self, scopes):
            return super().authorization([s.replace("pull,push", "pull") for s in scopes])

    auth = PullOnly(keys.private_key_pem, service=GITLAB_SERVICE)
    with RegistryClient(primary.client_config(), writable=True, auth=auth) as client:
        with pytest.raises(RegistryAuthError) as refused:
            upload.start(client.transport, "app")
    assert "lacks the needed action" in str(refused.value)
    assert "repository:app:pull,push" in str(refused.value)
    assert "insufficient_scope" in str(refused.value)


def test_read_only_client_never_asks_for_push(primary_reader):
    with pytest.raises(PermissionError, match="read-only"):
        upload.start(primary_reader.transport, "app")
    with pytest.raises(PermissionError, match="read-only"):
        primary_reader.delete_manifest("app", "sha256:" + "0" * 64)


def test_bearer_token_flow(start_registry, keys):
    with TokenService(
        keys, {"ci": ("ci-password", {"pull", "push"}), "viewer": ("v", {"pull"})}
    ) as tokens:
        registry = start_registry("tokenauth", keys=keys, token_realm=tokens.realm)
        writer_conn = {"host": registry.url, "login": "ci", "password": "ci-password"}
        with RegistryClient(RegistryConfig.from_connection(writer_conn), writable=True) as writer:
            assert writer.transport.auth.kind == "token"  # detected from the challenge
            images.push(writer, "team/app", images.ImageFactory().make(), ["1.2.3"])
        viewer_conn = {
            "host": registry.url,
            "login": "viewer",
            "password": "v",
            "extra": {"auth": "token"},
        }
        with RegistryClient(RegistryConfig.from_connection(viewer_conn), writable=True) as viewer:
            assert viewer.tags("team/app") == ["1.2.3"]
            with pytest.raises(RegistryAuthError) as refused:
                upload.start(viewer.transport, "team/app")
        assert "viewer" in str(refused.value) and "pull,push" in str(refused.value)
        bad_conn = {"host": registry.url, "login": "ci", "password": "wrong"}
        with RegistryClient(RegistryConfig.from_connection(bad_conn)) as bad:
            with pytest.raises(RegistryAuthError) as refused:
                bad.tags("team/app")
        assert "wrong" not in str(refused.value) and "'ci'" in str(refused.value)


@contextmanager
def token_client(
    start_registry, keys, *, expires_in: int
) -> Iterator[tuple[TokenService, FaultProxy, RegistryClient]]:
    """User ci's writable client, through a proxy that logs each request, to a registry that
    refuses its token service's tokens after 2 s; the service says they last ``expires_in``."""
    with TokenService(
        keys, {"ci": ("pw", {"pull", "push"})}, refused_after_seconds=2, expires_in=expires_in
    ) as tokens:
        registry = start_registry("tokenauth", keys=keys, token_realm=tokens.realm)
        with (
            FaultProxy(registry.url) as proxy,
            RegistryClient(
                RegistryConfig.from_connection(
                    {"host": proxy.url, "login": "ci", "password": "pw"}
                ),
                writable=True,
            ) as client,
        ):
            yield tokens, proxy, client


def test_token_is_fetched_again_once_it_expires(start_registry, keys):
    """The service says 2 s and means it: the client renews before sending, no 401."""
    with token_client(start_registry, keys, expires_in=2) as (tokens, proxy, client):
        images.push(client, "app", images.ImageFactory().make(), ["v1"])
        time.sleep(3)  # every token the client holds is refused by now
        issued, proxy.log[:] = tokens.issued, []
        assert client.tags("app") == ["v1"]
        assert [status for _, _, status in proxy.log] == [200]
    assert tokens.issued == issued + 1


def test_cached_token_refused_by_the_registry_is_refreshed_once(start_registry, keys):
    """The service says 300 s but the registry refuses the token after 2 s: the 401 on the
    cached token earns one fresh token and the request is sent again."""
    with token_client(start_registry, keys, expires_in=300) as (tokens, proxy, client):
        image = images.ImageFactory().make()
        images.push(client, "app", image, ["v1"])
        time.sleep(3)
        issued, proxy.log[:] = tokens.issued, []
        assert client.tags("app") == ["v1"]
        assert [status for _, _, status in proxy.log] == [401, 200]
        assert tokens.issued == issued + 1
        # A body goes again too: a manifest PUT on a refused token.
        time.sleep(3)
        proxy.log[:] = []
        client.put_manifest("app", "v2", image.raw, image.media_type)
        assert [(m, status) for m, _, status in proxy.log] == [("PUT", 401), ("PUT", 201)]
        assert client.head_manifest("app", "v2").digest == image.digest


def test_token_service_down_is_a_typed_error_with_advice(start_registry, keys):
    tokens = TokenService(keys, {"ci": ("pw", {"pull"})}).start()
    registry = start_registry("tokenauth", keys=keys, token_realm=tokens.realm)
    tokens.stop()
    config = RegistryConfig.from_connection(
        {
            "host": registry.url,
            "login": "ci",
            "password": "pw",
            "extra": {"max_retries": 1, "backoff_seconds": 0.01},
        }
    )
    with RegistryClient(config) as client, pytest.raises(RegistryUnavailableError) as down:
        client.tags("app")
    message = str(down.value)
    assert message.startswith(f"get token on {tokens.realm}: no answer from the token service")
    assert "What to do: check that the token service" in message and "pw" not in message


def test_unreadable_signing_key_is_a_typed_error_with_advice():
    config = RegistryConfig(
        "http://127.0.0.1:9",
        auth="jwt",
        service=GITLAB_SERVICE,
        private_key="-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    with RegistryClient(config) as client, pytest.raises(RegistryAuthError) as refused:
        client.tags("app")
    message = str(refused.value)
    assert "the signing key or certificate cannot be read" in message
    assert "What to do: private_key_path must name the registry's PEM private key" in message
    assert "bm90IGEga2V5" not in message


def test_basic_auth(start_registry, tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(b"ops:" + bcrypt.hashpw(b"pa55", bcrypt.gensalt(rounds=4)) + b"\n")
    registry = start_registry("basic", htpasswd=htpasswd)
    good = {"host": registry.url, "login": "ops", "password": "pa55"}
    with RegistryClient(RegistryConfig.from_connection(good), writable=True) as client:
        assert client.transport.auth.kind == "basic"
        images.push(client, "app", images.ImageFactory().make(), ["v1"])
        assert client.tags("app") == ["v1"]
    bad = {"host": registry.url, "login": "ops", "password": "nope"}
    with RegistryClient(RegistryConfig.from_connection(bad)) as client:
        with pytest.raises(RegistryAuthError, match="login 'ops' was refused"):
            client.tags("app")


def test_anonymous_detected(open_registry):
    with RegistryClient(RegistryConfig(open_registry.url), writable=True) as client:
        images.push(client, "app", images.ImageFactory().make(), ["v1"])
        assert client.transport.auth.kind == "anonymous"
        assert json.loads(client.get_manifest("app", "v1").raw)["schemaVersion"] == 2


def test_login_goes_only_to_a_token_realm_on_token_realm_hosts(start_registry, keys):
    """The challenge names the realm; a connection that lists its token hosts sends the login
    nowhere else, and the refusal names the realm's host and the setting, not the password."""
    with TokenService(keys, {"ci": ("realm-secret", {"pull"})}) as tokens:
        registry = start_registry("tokenauth", keys=keys, token_realm=tokens.realm)
        elsewhere = {
            "host": registry.url,
            "login": "ci",
            "password": "realm-secret",
            "extra": {"token_realm_hosts": "tokens.example.com, auth.example.com"},
        }
        with RegistryClient(RegistryConfig.from_connection(elsewhere)) as client:
            with pytest.raises(RegistryAuthError) as refused:
                client.tags("app")
        message = str(refused.value)
        assert tokens.issued == 0  # the token service never saw the login
        assert "http://127.0.0.1" in message and "token_realm_hosts" in message
        assert "realm-secret" not in message
        listed = {
            "host": registry.url,
            "login": "ci",
            "password": "realm-secret",
            "extra": {"token_realm_hosts": ["tokens.example.com", "127.0.0.1"]},
        }
        with RegistryClient(RegistryConfig.from_connection(listed)) as client:
            assert client.tags("app") == []
        assert tokens.issued == 1


def test_expired_tokens_leave_the_cache(keys):
    """One scope set per repository: over a long life the cache holds only the live tokens
    (a 10 s lifetime, one new scope a second: about ten), not every token it ever had. The
    cache is the same for tokens from a realm (``TokenAuth``)."""
    now = [1_000_000.0]
    auth = JwtAuth(keys.private_key_pem, service="s", ttl_seconds=10, clock=lambda: now[0])
    for i in range(5000):
        auth.header([repository_scope(f"group/app{i}", "pull")])
        now[0] += 1
    assert len(auth._cache._tokens) <= 2 * 11 + 64
    latest = auth.header([repository_scope("group/app4999", "pull")])
    assert auth.header([repository_scope("group/app4999", "pull")]) == latest  # still cached
