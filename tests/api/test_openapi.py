"""The OpenAPI document is generated from the declared schemas and covers the API."""

from __future__ import annotations


def test_openapi_document(live) -> None:
    response = live.session(None).get(f"{live.url}/api/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    assert {"get", "post"} <= set(paths["/api/v1/artifacts"])
    assert {"get", "put", "delete"} <= set(paths["/api/v1/artifacts/{filename}"])
    assert "get" in paths["/api/v1/blobs/{sha256}"]
    assert {"get", "post"} <= set(paths["/api/v1/tokens"])
    schemas = spec["components"]["schemas"]
    assert "sha256" in schemas["Artifact"]["properties"]
    put = paths["/api/v1/artifacts/{filename}"]["put"]
    assert "application/octet-stream" in put["requestBody"]["content"]
    assert put["security"] == [{"bearerAuth": []}]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_unknown_route_and_method_use_the_error_shape(live) -> None:
    http = live.session("viewer")
    missing = http.get(f"{live.url}/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = http.patch(f"{live.url}/api/v1/artifacts")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


def test_health(live) -> None:
    body = live.session("admin").get(f"{live.url}/api/v1/health").json()
    assert body["status"] == "up"
    assert body["checks"] == {"database": "ok", "storage": "ok"}
