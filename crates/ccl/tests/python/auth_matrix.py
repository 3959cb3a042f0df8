"""The whole matrix of callers x endpoints, from the node's own route table (/node/api): callers
without a certificate or with an unknown one get 401 on every user endpoint, users below the
required role get 403, everyone else gets through. Governance writes take a member's COSE Sign1
signature, not a TLS identity: whoever sends one without it gets 401. Usage: auth_matrix.py ENDPOINT SERVICE_CERT USER_PEM TMPDIR."""

import json
import sys

import requests
from cryptography.hazmat.primitives.asymmetric import ec

from identities import identity

API = "api-version=2022-05-13"
RANK = {"Reader": 1, "Contributor": 2, "Administrator": 3}


def main():
    endpoint, service_cert, admin_pem, tmp = sys.argv[1:5]

    def call(method, path, cert, body=None, ct=None):
        headers = {"content-type": ct} if ct else {}
        return requests.request(method.upper(), endpoint + path, cert=cert, verify=service_cert, data=body, headers=headers, timeout=10)

    def set_role(uid, role):
        r = call("patch", f"/app/users/{uid}?{API}", admin_pem, json.dumps({"assignedRole": role}), "application/merge-patch+json")
        assert r.status_code == 200, r.text

    callers = {"no certificate": (None, 0, 401), "unknown certificate": (identity(tmp, "stranger", ec.SECP256R1)[0], 0, 401)}
    for role in ["Reader", "Contributor"]:
        pem, uid = identity(tmp, role.lower(), ec.SECP256R1)
        set_role(uid, role)
        callers[role] = (pem, RANK[role], 403)
    callers["Administrator"] = (admin_pem, RANK["Administrator"], None)
    target = "matrix-target"

    routes = call("get", "/node/api", None).json()["paths"]
    checked = 0
    for path, methods in routes.items():
        for method, spec in methods.items():
            policy = spec["x-ccl-authorization"]
            for name, (pem, rank, denial) in callers.items():
                set_role(target, "Reader")
                p = path.replace("{txid}", "1.1").replace("{user_id}", target)
                p = p.replace("{proposalId}", "ab" * 32).replace("{memberId}", "cd" * 32)
                p = p.replace("{collectionId}", "matrix-collection")
                q = f"{p}{'&' if '?' in p else '?'}{API}" if p.startswith("/app") else p
                if p.startswith("/gov"):
                    q = f"{p}?api-version=2024-07-01"
                body, ct = None, None
                if policy.startswith("Trusted node"):
                    # Raft RPCs: no user or member is a node.
                    r = call(method, q, pem, b"\x00", "application/x-ccl-raft")
                    assert r.status_code == (401 if pem is None else 403), f"{name} {method} {path}: {r.status_code} {r.text}"
                    assert r.json()["error"]["code"] in ("Unauthorized", "Forbidden"), r.text
                    checked += 1
                    continue
                if policy.startswith("Joining node"):
                    # The TLS client certificate must be the node_cert of the request.
                    stranger = open(callers["unknown certificate"][0]).read()
                    r = call(method, q, pem, json.dumps({"node_cert": stranger}), "application/json")
                    expected = 400 if name == "unknown certificate" else 401
                    assert r.status_code == expected, f"{name} {method} {path}: {r.status_code} {r.text}"
                    checked += 1
                    continue
                if policy.startswith("Member"):
                    r = call(method, q, pem, b"not a COSE Sign1 message", "application/cose")
                    assert r.status_code == 401, f"{name} {method} {path}: {r.status_code} {r.text}"
                    assert r.json()["error"]["code"] == "InvalidAuthenticationInfo", r.text
                    checked += 1
                    continue
                if method == "post":
                    body, ct = json.dumps({"contents": "matrix"}), "application/json"
                if method == "patch":
                    body, ct = json.dumps({"assignedRole": "Reader"}), "application/merge-patch+json"
                r = call(method, q, pem, body, ct)
                allowed = policy == "Anyone" or rank >= RANK[policy]
                if allowed:
                    assert r.status_code not in (401, 403), f"{name} {method} {path}: {r.status_code} {r.text}"
                else:
                    assert r.status_code == denial, f"{name} {method} {path}: {r.status_code} {r.text}"
                    assert r.json()["error"]["code"] in ("Unauthorized", "Forbidden"), r.text
                checked += 1
    print(f"auth matrix OK ({checked} calls)")


if __name__ == "__main__":
    main()
