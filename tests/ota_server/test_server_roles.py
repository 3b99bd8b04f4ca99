"""Role checks of every API route, through the real uvicorn server.

Each route is called by each principal - no token, a well-formed token with a
wrong secret, viewer, operator, release manager of another family, admin,
release manager of the family - and must answer the expected status. Rows
run in order on one server, because the release routes need the state the
previous rows created (a release to upload, a proposal to sign). Denied
principals go first in each row, so an allowed call also proves the denied
ones changed nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from release_helpers import BuiltRelease, build_release, publish, sign
from server_fixture import RunningServer

from edgeseal.sdk.signing import sign_proposal

PRINCIPALS = ("none", "bad", "viewer", "operator", "rm-other", "admin", "rm")
R = ("none", "bad")  # unauthenticated: 401 everywhere but the public routes


@dataclass
class Row:
    method: str
    path: str
    expected: dict[str, int]
    body: Callable[[str], Any] | None = None


def statuses(default: int, **overrides: int) -> dict[str, int]:
    table = dict.fromkeys(PRINCIPALS, default)
    table.update({"none": 401, "bad": 401})
    table.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return table


def only(role: str, ok: int) -> dict[str, int]:
    table = statuses(403)
    table[role] = ok
    return table


def test_role_matrix(ota_server: RunningServer) -> None:
    server = ota_server
    server.add_family("detector")
    server.add_family("other")
    tokens = {
        "none": None,
        "bad": "est1.0123456789abcdef." + "A" * 43,
        "viewer": server.token("viewer"),
        "operator": server.token("operator"),
        "rm-other": server.token("release-manager", "other"),
        "admin": server.admin_token,
        "rm": server.token("release-manager", "detector"),
    }
    # a real token id with a wrong secret is just as bad
    real_id = tokens["viewer"].split(".")[1]
    tokens["bad"] = f"est1.{real_id}." + "A" * 43

    first: BuiltRelease = build_release(server, "detector", 1)
    publish(server, first, tokens["rm"])
    second = build_release(server, "detector", 2)

    def device_body(who: str) -> dict[str, Any]:
        from release_helpers import device_key_pem

        return {
            "id": f"dev-{who}",
            "public_key_pem": device_key_pem()[1],
            "hardware_class": "rpi5",
            "channel": "stable",
        }

    def signature_body(_who: str) -> dict[str, Any]:
        proposal = server.request("GET", "/api/v1/releases/detector-2/proposal", token=tokens["rm"])
        keyid, sig = sign_proposal(proposal.body, server.release_managers["detector"][0])
        return {"keyid": keyid, "sig": sig}

    public = dict.fromkeys(PRINCIPALS, 200)
    readers = statuses(200)
    rows = [
        Row("GET", "/healthz", public),
        Row("GET", "/tuf/metadata/timestamp.json", public),
        Row("GET", "/tuf/metadata/1.root.json", public),
        Row("GET", "/api/v1/whoami", readers),
        Row("GET", "/api/v1/kek", readers),
        Row("GET", "/api/v1/families", readers),
        Row("GET", "/api/v1/releases", readers),
        Row("GET", "/api/v1/releases?family=detector", readers),
        Row("GET", "/api/v1/releases/detector-1", readers),
        Row("GET", "/api/v1/devices", readers),
        Row("GET", "/api/v1/audit", readers),
        Row("POST", "/api/v1/releases", only("rm", 201), lambda _w: second.body),
        Row(
            "PUT",
            "/api/v1/releases/detector-2/sealed-model",
            only("rm", 200),
            lambda _w: second.sealed,
        ),
        Row("GET", "/api/v1/releases/detector-2/proposal", readers),
        Row(
            "POST",
            "/api/v1/releases/detector-2/signatures",
            only("rm", 200),
            signature_body,
        ),
        Row("POST", "/api/v1/devices", statuses(403, operator=201, admin=201), device_body),
        Row("POST", "/api/v1/devices/dev-operator/revoke", statuses(403, operator=200, admin=200)),
        Row(
            "POST",
            "/api/v1/tokens",
            only("admin", 201),
            lambda who: {"name": f"made-by-{who}", "role": "viewer"},
        ),
    ]
    failures = []
    for row in rows:
        failures += run_row(server, tokens, row)

    # finish release 2 (second signature), then the yank route of release 1
    assert sign(server, "detector-2", tokens["rm"], 1)["state"] == "published"
    failures += run_row(
        server,
        tokens,
        Row("POST", "/api/v1/releases/detector-1/yank", only("rm", 200), lambda _w: {}),
    )
    assert not failures, "\n".join(failures)

    # denied device/token creations left nothing behind
    devices = server.request("GET", "/api/v1/devices", token=tokens["admin"]).json()
    assert sorted(d["id"] for d in devices) == ["dev-admin", "dev-operator"]


def run_row(server: RunningServer, tokens: dict[str, str | None], row: Row) -> list[str]:
    failures = []
    for who in PRINCIPALS:
        body = row.body(who) if row.body is not None else None
        answer = server.request(row.method, row.path, token=tokens[who], body=body)
        if answer.status != row.expected[who]:
            failures.append(
                f"{row.method} {row.path} as {who}: {answer.status}, "
                f"expected {row.expected[who]} ({answer.body[:200]!r})"
            )
        elif answer.status >= 400:
            error = answer.json()["error"]
            assert set(error) == {"code", "message"}
    return failures
