"""A registry (or whatever answers in its place) that sends hostile URLs and bodies.

No real registry sends a malicious ``Link`` or ``Location``, redirects API calls to another
host, or answers with HTML, so these run against a small fake on loopback. A second server,
``elsewhere``, records every request it receives: it must never see a credential.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterator

import pytest
import urllib3.util.connection
from fake_http import FakeServer, Received, Reply

from registry_replication.engine.snapshot import take_snapshot
from registry_replication.transport import mediatypes as mt
from registry_replication.transport.auth import Challenge
from registry_replication.transport.client import RegistryClient
from registry_replication.transport.config import ConfigError, RegistryConfig
from registry_replication.transport.errors import RegistryAuthError, RegistryError

LOGIN, PASSWORD = "replicator", "never-leaves-the-registry"
DIGEST = "sha256:" + "c" * 64


@pytest.fixture
def elsewhere() -> Iterator[FakeServer]:
    """Another host: serves a blob at /storage/blob, records everything."""
    data = b"layer bytes from storage"

    def answer(request: Received) -> Reply:
        if request.path.startswith("/storage/blob"):
            return Reply(200, {"Content-Type": "application/octet-stream"}, data)
        return Reply(200, {"Content-Type": "application/json"}, b'{"repositories": ["x"]}')

    with FakeServer(answer) as server:
        server.blob = data  # type: ignore[attr-defined]
        yield server


def fake_registry(answer) -> FakeServer:
    return FakeServer(answer)


def client_for(server: FakeServer, **extra) -> RegistryClient:
    config = RegistryConfig.from_connection(
        {
            "conn_type": "oci_registry",
            "host": server.url,
            "login": LOGIN,
            "password": PASSWORD,
            "extra": {"auth": "basic", "max_retries": 0, **extra},
        }
    )
    return RegistryClient(config, writable=True)


def assert_nothing_reached(elsewhere: FakeServer) -> None:
    assert elsewhere.received == [], elsewhere.received


def catalog_with_link(link: str):
    def answer(request: Received) -> Reply:
        if request.path.startswith("/v2/_catalog") and "last" not in request.path:
            return Reply(
                200,
                {"Content-Type": "application/json", "Link": f'<{link}>; rel="next"'},
                b'{"repositories": ["a"]}',
            )
        return Reply(
            404,
            {"Content-Type": "application/json"},
            b'{"errors": [{"code": "NAME_UNKNOWN", "message": "no"}]}',
        )

    return answer


LINKS = [
    "http:{other}/v2/_catalog?last=a",  # the crafted value that used to get through
    "{other}/v2/_catalog?last=a",
    "//127.0.0.1:{other_port}/v2/_catalog?last=a",
    "http://127.0.0.1:{port}@127.0.0.1:{other_port}/v2/_catalog?last=a",
    "http://127.0.0.1:{port}\\@127.0.0.1:{other_port}/v2/_catalog?last=a",
    "https://127.0.0.1:{port}/v2/_catalog?last=a",
    "http://localhost:{port}/v2/_catalog?last=a",
    "http://127.0.0.1:{other_port}/v2/_catalog?last=a",
    "http://127.0.0.1:99999/v2/_catalog?last=a",
]


@pytest.mark.parametrize("template", LINKS)
def test_a_link_never_takes_credentials_elsewhere(elsewhere, template):
    with fake_registry(lambda r: Reply()) as registry:
        link = template.format(other=elsewhere.url, other_port=elsewhere.port, port=registry.port)
        registry.answer = catalog_with_link(link)
        client = client_for(registry)
        with pytest.raises(RegistryError):
            list(client.catalog())
        assert all(r.headers.get("authorization") for r in registry.received)  # it did send them
    assert_nothing_reached(elsewhere)


@pytest.mark.parametrize("template", [t.replace("_catalog?last=a", "upload/1") for t in LINKS])
def test_an_upload_location_never_takes_credentials_elsewhere(elsewhere, template):
    def answer(request: Received) -> Reply:
        if request.method == "POST":
            return Reply(
                202,
                {
                    "Location": template.format(
                        other=elsewhere.url, other_port=elsewhere.port, port=registry.port
                    )
                },
            )
        return Reply(404)

    with fake_registry(answer) as registry:
        with pytest.raises(RegistryError):
            client_for(registry).push_blob(
                "group/app", "sha256:" + hashlib.sha256(b"x").hexdigest(), b"x"
            )
    assert_nothing_reached(elsewhere)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_of_an_api_call_never_takes_credentials_elsewhere(elsewhere, status):
    def answer(request: Received) -> Reply:
        return Reply(status, {"Location": f"{elsewhere.url}/v2/group/app/manifests/1.0"})

    with fake_registry(answer) as registry:
        client = client_for(registry)
        for call in (
            lambda: client.get_manifest("group/app", "1.0"),
            lambda: client.tags("group/app"),
            lambda: list(client.catalog()),
        ):
            with pytest.raises(RegistryError, match="refused to follow a redirect"):
                call()
    assert_nothing_reached(elsewhere)


def test_a_redirect_within_the_registry_is_followed_with_credentials():
    raw = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}'
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()

    def answer(request: Received) -> Reply:
        if request.path == "/v2/group/app/manifests/1.0":
            return Reply(307, {"Location": f"/v2/group/app/manifests/{digest}"})
        return Reply(200, {"Content-Type": mt.OCI_MANIFEST, "Docker-Content-Digest": digest}, raw)

    with fake_registry(answer) as registry:
        manifest = client_for(registry).get_manifest("group/app", "1.0")
        assert manifest.raw == raw and manifest.digest == digest
        assert [r.path for r in registry.received] == [
            "/v2/group/app/manifests/1.0",
            f"/v2/group/app/manifests/{digest}",
        ]
        assert all(r.headers["authorization"].startswith("Basic ") for r in registry.received)


def test_a_blob_redirect_to_storage_gets_no_credentials_netrc_or_proxy(
    elsewhere, tmp_path, monkeypatch
):
    data = elsewhere.blob
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def answer(request: Received) -> Reply:
        return Reply(307, {"Location": f"{elsewhere.url}/storage/blob?X-Amz-Signature=abc"})

    with FakeServer() as proxy, fake_registry(answer) as registry:
        client = client_for(registry, allow_private_redirects=True)  # storage on loopback here
        # Set after the client was built: an operator's shell, not its configuration.
        (tmp_path / ".netrc").write_text(
            f"machine 127.0.0.1 login netrc-user password {PASSWORD}\n"
        )
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        assert b"".join(client.read_blob("group/app", digest)) == data
        assert registry.received[0].headers["authorization"].startswith("Basic ")
    (fetched,) = elsewhere.received
    assert fetched.path == "/storage/blob?X-Amz-Signature=abc"
    assert "authorization" not in fetched.headers and "cookie" not in fetched.headers
    assert proxy.received == []


@pytest.mark.parametrize(
    "body,content_type",
    [
        (b"<html><body>502 Bad Gateway</body></html>", "text/html"),
        (b"[1, 2, 3]", "application/json"),
        (b'{"errors": "boom"}', "application/json"),
        (b'{"errors": [42]}', "application/json"),
        (b'{"errors": [{"code": {"nested": 1}, "message": 5, "detail": [1]}]}', "application/json"),
        (b"\xff\xfe not utf-8", "application/json"),
        (b"", "application/json"),
    ],
)
def test_an_error_body_of_any_shape_is_a_registry_error(body, content_type):
    def answer(request: Received) -> Reply:
        return Reply(400, {"Content-Type": content_type}, body)

    with fake_registry(answer) as registry:
        client = client_for(registry)
        with pytest.raises(RegistryError) as raised:
            client.get_manifest("group/app", "1.0")
        assert raised.value.status == 400 and raised.value.repository == "group/app"
        assert "HTTP 400" in str(raised.value) and PASSWORD not in str(raised.value)
        with pytest.raises(RegistryError):
            client.tags("group/app")


@pytest.mark.parametrize(
    "body", [b"<html>", b"[]", b'{"repositories": "a", "tags": 7}', b'"text"', b"null"]
)
def test_a_listing_that_is_not_the_expected_json_is_a_registry_error(body):
    with fake_registry(
        lambda r: Reply(200, {"Content-Type": "application/json"}, body)
    ) as registry:
        client = client_for(registry)
        with pytest.raises(RegistryError, match="not the expected JSON"):
            list(client.catalog())
        with pytest.raises(RegistryError, match="not the expected JSON"):
            client.tags("group/app")


def odd_registry(request: Received) -> Reply:
    """A registry whose catalog and repositories hold every oddity at once."""
    json_type = {"Content-Type": "application/json"}
    catalog = [
        "good/app",
        42,
        None,
        {"x": 1},
        "Foo/app",
        "bad-digest/app",
        "schema1/app",
        "html/app",
        "odd-tags/app",
        "forged\nERROR line",
    ]
    tags = {
        "good/app": ["1.0"],
        "bad-digest/app": ["1.0", "2.0"],
        "schema1/app": ["old"],
        "odd-tags/app": ["ok", 7, "bad tag", "t" * 129],
    }
    path = request.path.split("?")[0]
    if path == "/v2/_catalog":
        return Reply(200, json_type, json.dumps({"repositories": catalog}).encode())
    if path == "/v2/html/app/tags/list":
        return Reply(200, {"Content-Type": "text/html"}, b"<html>login</html>")
    for name, listed in tags.items():
        if path == f"/v2/{name}/tags/list":
            return Reply(200, json_type, json.dumps({"name": name, "tags": listed}).encode())
        if path.startswith(f"/v2/{name}/manifests/"):
            tag = path.rsplit("/", 1)[1]
            if name == "bad-digest/app" and tag == "1.0":
                return Reply(
                    200,
                    {
                        "Docker-Content-Digest": "sha256:../../etc/passwd",
                        "Content-Type": mt.OCI_MANIFEST,
                    },
                )
            media_type = mt.DOCKER_SCHEMA1_SIGNED if name == "schema1/app" else mt.OCI_MANIFEST
            return Reply(
                200,
                {
                    "Docker-Content-Digest": DIGEST,
                    "Content-Type": media_type,
                    "Content-Length": "100",
                },
            )
    return Reply(404, json_type, b'{"errors": [{"code": "NAME_UNKNOWN", "message": "no"}]}')


def test_every_oddity_is_its_own_repositorys_problem():
    with fake_registry(odd_registry) as registry:
        snap = take_snapshot(client_for(registry))
    assert snap.errors == []  # nothing stops the run
    listed = set(zip(snap.tags["repository"], snap.tags["tag"]))
    assert listed == {
        ("good/app", "1.0"),
        ("bad-digest/app", "2.0"),
        ("schema1/app", "old"),
        ("odd-tags/app", "ok"),
    }
    found = {(p["repository"], p["tag"]): p for p in snap.problems}
    assert set(found) == {
        ("42", None),
        ("null", None),
        ('{"x": 1}', None),
        ("Foo/app", None),
        ("bad-digest/app", "1.0"),
        ("schema1/app", "old"),
        ("html/app", None),
        ("odd-tags/app", "7"),
        ("odd-tags/app", "bad tag"),
        ("odd-tags/app", "t" * 128),
        ("forged\\nERROR line", None),
    }  # escaped: a name cannot forge a log line
    assert "invalid repository name 'Foo/app'" in found[("Foo/app", None)]["reason"]
    assert "Docker-Content-Digest" in found[("bad-digest/app", "1.0")]["reason"]
    assert "DIGEST_INVALID" in found[("bad-digest/app", "1.0")]["reason"]
    assert "schema 1" in found[("schema1/app", "old")]["reason"]
    assert "not the expected JSON" in found[("html/app", None)]["reason"]
    assert all(p["advice"] for p in snap.problems)
    assert snap.problem_repositories == {
        "42",
        "null",
        '{"x": 1}',
        "Foo/app",
        "bad-digest/app",
        "schema1/app",
        "html/app",
        "odd-tags/app",
        "forged\\nERROR line",
    }
    assert not snap.complete


def test_token_ttl_has_an_upper_bound():
    with pytest.raises(ConfigError, match="token_ttl_seconds 86400 is above 3600"):
        RegistryConfig(url="https://r.example", token_ttl_seconds=86400)
    assert RegistryConfig(url="https://r.example", token_ttl_seconds=3600).token_ttl_seconds == 3600


def test_an_https_registry_sends_its_login_only_to_an_https_realm():
    """A challenge (from whatever answers at the registry's address) naming a plain-http realm:
    refused before any connection, for an https registry. The registry itself is never asked
    here: the challenge is handed to the client's auth as a registry's 401 would be."""
    with FakeServer() as realm:
        config = RegistryConfig(
            "https://registry.example", auth="token", login="ci", password="clear-text-never"
        )
        with RegistryClient(config) as client:
            with pytest.raises(RegistryAuthError) as refused:
                client.transport.auth.refresh(
                    Challenge("bearer", {"realm": f"{realm.url}/jwt/auth"}), (), fresh=False
                )
                client.transport.auth.header(["repository:app:pull"])
    assert realm.received == []
    message = str(refused.value)
    assert f"'http://127.0.0.1:{realm.port}'" in message and "https" in message
    assert "token_realm_hosts" in message and "clear-text-never" not in message


@pytest.mark.parametrize(
    "host",
    [
        "https://ci:url-password-1@registry.example",
        "ci:url-password-1@registry.example:5000",
        "ftp://ci:url-password-1@registry.example",
    ],
)
def test_a_registry_url_with_a_password_is_refused_when_read(host):
    """Else every request fails and the URL, password and all, lands in each error, XCom, the
    status page and the run's artifacts."""
    with pytest.raises(ConfigError) as refused:
        RegistryConfig.from_connection({"conn_type": "oci_registry", "host": host})
    assert "url-password-1" not in str(refused.value)
    assert "registry.example" in str(refused.value) and "login and password" in str(refused.value)


@pytest.mark.parametrize("reference", ["old", DIGEST])
def test_a_schema1_manifest_whose_bytes_do_not_hash_to_its_digest_is_never_returned(reference):
    """A signed schema 1 manifest's digest is over its payload without the signatures, so its
    bytes cannot be checked the usual way: they are refused, never passed on unverified (here
    bytes that are not the manifest at all, served under that digest)."""
    raw = json.dumps(
        {
            "schemaVersion": 1,
            "name": "group/app",
            "tag": "old",
            "fsLayers": [{"blobSum": "sha256:" + "e" * 64}],
        }
    ).encode()

    def answer(request: Received) -> Reply:
        return Reply(
            200, {"Content-Type": mt.DOCKER_SCHEMA1_SIGNED, "Docker-Content-Digest": DIGEST}, raw
        )

    with fake_registry(answer) as registry:
        with pytest.raises(RegistryError) as refused:
            client_for(registry).get_manifest("group/app", reference)
    assert refused.value.code == "MANIFEST_UNVERIFIED" and refused.value.reference == DIGEST
    assert "schema 1" in str(refused.value) and "rebuild the image" in str(refused.value)


@pytest.fixture
def connections_made(monkeypatch) -> list[tuple[str, int]]:
    """Every connection the client opens, recorded; one off loopback is stopped before it is
    made (so this test, failing, still sends nothing to 169.254.169.254 or 10.0.0.1)."""
    made: list[tuple[str, int]] = []
    real = urllib3.util.connection.create_connection

    def on_loopback_only(address, *args, **kwargs):
        made.append(address)
        try:
            loopback = ipaddress.ip_address(address[0]).is_loopback
        except ValueError:
            loopback = address[0] == "localhost"
        if not loopback:
            raise OSError(f"test: no connection off loopback ({address[0]})")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", on_loopback_only)
    return made


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://10.0.0.1/storage/blob",
        "http://[fd00::1]:9000/storage/blob",
        "https://192.168.1.20/storage/blob",
        "http://127.0.0.1:{other_port}/storage/blob",  # loopback, off the registry's own port
        "http://localhost:{other_port}/storage/blob",
    ],
)
def test_a_storage_redirect_to_a_private_address_is_refused_before_connecting(
    elsewhere, connections_made, target
):
    digest = "sha256:" + hashlib.sha256(elsewhere.blob).hexdigest()
    location = target.format(other_port=elsewhere.port)

    def answer(request: Received) -> Reply:
        return Reply(307, {"Location": location})

    with fake_registry(answer) as registry:
        with pytest.raises(RegistryError) as refused:
            b"".join(client_for(registry).read_blob("group/app", digest))
    assert connections_made and set(connections_made) == {("127.0.0.1", registry.port)}
    assert_nothing_reached(elsewhere)
    assert "refused to follow the storage redirect" in str(refused.value)
    assert "allow_private_redirects" in str(refused.value) and PASSWORD not in str(refused.value)


def test_a_storage_redirect_to_the_registrys_own_host_and_port_is_followed(connections_made):
    data = b"layer bytes the registry serves itself"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def answer(request: Received) -> Reply:
        if request.path.startswith("/storage/"):
            return Reply(200, {"Content-Type": "application/octet-stream"}, data)
        return Reply(307, {"Location": f"http://127.0.0.1:{registry.port}/storage/{digest}"})

    with fake_registry(answer) as registry:
        assert b"".join(client_for(registry).read_blob("group/app", digest)) == data
        assert [r.path.split("/")[1] for r in registry.received] == ["v2", "storage"]
    assert set(connections_made) == {("127.0.0.1", registry.port)}


@pytest.mark.parametrize(
    "name, value",
    [
        *(
            (name, value)
            for name in ("max_manifest_bytes", "image_plan_seconds")
            for value in ("nan", "inf", 1e400, "1e400", -1, 0, "x", None, [], True)
        ),
        ("max_index_depth", 1.5),
        ("max_index_depth", "8.5"),
    ],
)
def test_a_bound_that_is_not_a_positive_finite_number_is_refused(name, value):
    with pytest.raises(ConfigError, match=name):
        RegistryConfig.from_connection(
            {
                "conn_type": "oci_registry",
                "host": "https://r.example",
                "extra": {"auth": "anonymous", name: value},
            }
        )
