"""The status page's state-changing forms: what counts as a forgeable request."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import FastAPI, Form, Request
from fastapi.testclient import TestClient

from registry_replication.airflow.status_page import check_csrf, csrf_token

JWT = "header.payload.signature"


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()

    @app.get("/token")
    def token(request: Request) -> dict[str, str | None]:
        return {"csrf": csrf_token(request)}

    @app.post("/change")
    def change(request: Request, csrf: Annotated[str | None, Form()] = None) -> dict[str, bool]:
        check_csrf(request, csrf)
        return {"changed": True}

    return TestClient(app, base_url="http://airflow.test")


def test_a_form_needs_the_token_of_its_own_login(client):
    client.cookies.set("_token", JWT)
    token = client.get("/token").json()["csrf"]
    assert token and JWT not in token
    assert client.post("/change", data={"csrf": token}).json() == {"changed": True}
    assert (
        client.post(
            "/change", data={"csrf": token}, headers={"Origin": "http://airflow.test"}
        ).status_code
        == 200
    )
    for data in ({}, {"csrf": ""}, {"csrf": "0" * 64}):
        refused = client.post("/change", data=data)
        assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    # Another login's token does not fit this one.
    client.cookies.set("_token", JWT + "x")
    assert client.post("/change", data={"csrf": token}).status_code == 403


def test_cross_origin_posts_are_refused_even_with_the_token(client):
    client.cookies.set("_token", JWT)
    token = client.get("/token").json()["csrf"]
    for origin in ("http://evil.test", "null", "http://airflow.test.evil.test"):
        refused = client.post("/change", data={"csrf": token}, headers={"Origin": origin})
        assert (refused.status_code, refused.json()["detail"]) == (
            403,
            "cross-origin request refused",
        )


def test_a_bearer_header_is_not_forgeable_and_needs_no_token(client):
    assert client.post("/change", headers={"Authorization": f"Bearer {JWT}"}).status_code == 200
    assert client.get("/token").json() == {"csrf": None}  # no cookie: no page token
