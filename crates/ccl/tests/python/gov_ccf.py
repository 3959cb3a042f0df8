"""Governance against ccl with CCF's own signing tool (ccf_cose_sign1, ccf==6.0.28).

Usage: gov_ccf.py ENDPOINT SERVICE_CERT TMPDIR MEMBER0_PEM MEMBER1_PEM MEMBER2_PEM

On a service that is still Opening with three Accepted members: the members acknowledge the state
digest, a transition_service_to_open proposal signed by ccf_cose_sign1 is accepted by two ballots
signed by ccf_cose_sign1, and the service is Open. Then every kind of bad request is refused with
the documented error and changes nothing (the ledger does not grow).
"""

import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

V = "api-version=2024-07-01"
YES = "export function vote (proposal, proposerId) { return true }"
SIGN = os.path.join(os.path.dirname(sys.executable), "ccf_cose_sign1")


def split_pem(pem_path, tmp, name):
    text = open(pem_path).read()
    blocks = re.findall(r"(-----BEGIN ([A-Z ]+)-----.*?-----END \2-----\n?)", text, re.S)
    cert = next(b for b, t in blocks if t == "CERTIFICATE")
    key = next(b for b, t in blocks if t.endswith("PRIVATE KEY"))
    c, k = os.path.join(tmp, f"{name}.cert.pem"), os.path.join(tmp, f"{name}.key.pem")
    open(c, "w").write(cert)
    open(k, "w").write(key)
    der = x509.load_pem_x509_certificate(cert.encode()).public_bytes(serialization.Encoding.DER)
    return c, k, hashlib.sha256(der).hexdigest()


def stranger(tmp):
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA384())
    )
    c, k = os.path.join(tmp, "stranger.cert.pem"), os.path.join(tmp, "stranger.key.pem")
    open(c, "wb").write(cert.public_bytes(serialization.Encoding.PEM))
    open(k, "wb").write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return c, k


def main():
    endpoint, service_cert, tmp = sys.argv[1:4]
    members = [split_pem(p, tmp, f"member{i}") for i, p in enumerate(sys.argv[4:7])]
    counter = [0]

    def sign(member, msg_type, content, proposal_id=None, created_at=None, key=None):
        cert, mkey, _ = member
        counter[0] += 1
        path = os.path.join(tmp, f"content{counter[0]}.json")
        with open(path, "wb") as f:
            f.write(content if isinstance(content, bytes) else json.dumps(content).encode())
        created = created_at or datetime.datetime.now(datetime.timezone.utc).isoformat()
        cmd = [SIGN, "--content", path, "--signing-cert", cert, "--signing-key", key or mkey,
               "--ccf-gov-msg-type", msg_type, "--ccf-gov-msg-created-at", created]
        if proposal_id:
            cmd += ["--ccf-gov-msg-proposal-id", proposal_id]
        return subprocess.run(cmd, check=True, capture_output=True).stdout

    def post(path, body, ct="application/cose"):
        sep = "&" if "?" in path else "?"
        return requests.post(f"{endpoint}{path}{sep}{V}", data=body, headers={"content-type": ct}, verify=service_cert, timeout=30)

    def get(path):
        return requests.get(f"{endpoint}{path}?{V}", verify=service_cert, timeout=30)

    def last_seqno():
        """The ledger's last seqno, once it has stopped moving (signatures settle)."""
        prev = None
        while True:
            text = requests.get(f"{endpoint}/node/metrics", verify=service_cert, timeout=10).text
            cur = int(re.search(r"^ccl_last_seqno (\d+)$", text, re.M).group(1))
            if cur == prev:
                return cur
            prev = cur
            time.sleep(0.4)

    # The service is Opening: users wait.
    assert get("/gov/service/info").json()["status"] == "Opening"

    # Members acknowledge the state digest (Accepted -> Active).
    for m in members:
        r = post(f"/gov/members/state-digests/{m[2]}:update", sign(m, "state_digest", b""))
        assert r.status_code == 200, r.text
        digest = r.json()["stateDigest"]
        r = post(f"/gov/members/state-digests/{m[2]}:ack", sign(m, "ack", {"stateDigest": digest}))
        assert r.status_code == 204, r.text
    statuses = {m["memberId"]: m["status"] for m in get("/gov/service/members").json()["value"]}
    assert all(statuses[m[2]] == "Active" for m in members), statuses

    # A proposal and ballots signed with ccf_cose_sign1 open the service.
    r = post("/gov/members/proposals:create", sign(members[0], "proposal", {"actions": [{"name": "transition_service_to_open", "args": {}}]}))
    assert r.status_code == 200, r.text
    pid = r.json()["proposalId"]
    assert r.json()["proposalState"] == "Open", r.text
    assert r.json()["proposerId"] == members[0][2]
    r = post(f"/gov/members/proposals/{pid}/ballots/{members[1][2]}:submit", sign(members[1], "ballot", {"ballot": YES}, pid))
    assert r.status_code == 200 and r.json()["proposalState"] == "Open", r.text
    r = post(f"/gov/members/proposals/{pid}/ballots/{members[2][2]}:submit", sign(members[2], "ballot", {"ballot": YES}, pid))
    assert r.status_code == 200 and r.json()["proposalState"] == "Accepted", r.text
    assert get(f"/gov/members/proposals/{pid}").json()["proposalState"] == "Accepted"
    assert get(f"/gov/members/proposals/{pid}/actions").json()["actions"][0]["name"] == "transition_service_to_open"
    assert get(f"/gov/members/proposals/{pid}/ballots/{members[1][2]}").text == YES
    assert get("/gov/service/info").json()["status"] == "Open"
    assert pid in [p["proposalId"] for p in get("/gov/members/proposals").json()["value"]]

    # An open proposal to refuse ballots on later, and a closed one.
    user = stranger(tmp)
    r = post("/gov/members/proposals:create", sign(members[0], "proposal", {"actions": [{"name": "set_user", "args": {"cert": open(user[0]).read()}}]}))
    assert r.status_code == 200, r.text
    open_pid = r.json()["proposalId"]

    other_key = os.path.join(tmp, "other.key.pem")
    open(other_key, "wb").write(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    replayed = sign(members[1], "ballot", {"ballot": YES}, open_pid)
    r = post(f"/gov/members/proposals/{open_pid}/ballots/{members[1][2]}:submit", replayed)
    assert r.status_code == 200 and r.json()["proposalState"] == "Open", r.text
    stale = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)).isoformat()
    loop_ballot = "export function vote (proposal, proposerId) { while (true) {} }"
    throw_ballot = "export function vote (proposal, proposerId) { throw new Error('no way') }"
    good = {"actions": [{"name": "set_member_data", "args": {"member_id": members[0][2], "member_data": {"x": 1}}}]}
    member2_ballot = f"/gov/members/proposals/{open_pid}/ballots/{members[2][2]}:submit"
    cases = [
        ("unsigned (JSON)", "/gov/members/proposals:create", json.dumps(good).encode(), "application/json", 415, "UnsupportedContentType"),
        ("unsigned (not COSE)", "/gov/members/proposals:create", json.dumps(good).encode(), "application/cose", 401, "InvalidAuthenticationInfo"),
        ("bad signature", "/gov/members/proposals:create", sign(members[0], "proposal", good, key=other_key), "application/cose", 401, "InvalidAuthenticationInfo"),
        ("unknown member", "/gov/members/proposals:create", sign((user[0], user[1], None), "proposal", good), "application/cose", 401, "InvalidAuthenticationInfo"),
        ("wrong message type", "/gov/members/proposals:create", sign(members[0], "ballot", good, proposal_id=open_pid), "application/cose", 401, "InvalidAuthenticationInfo"),
        ("stale created_at", "/gov/members/proposals:create", sign(members[0], "proposal", good, created_at=stale), "application/cose", 400, "InvalidCreatedAt"),
        ("replayed request", f"/gov/members/proposals/{open_pid}/ballots/{members[1][2]}:submit", replayed, "application/cose", 400, "ProposalReplay"),
        ("ballot on a closed proposal", f"/gov/members/proposals/{pid}/ballots/{members[0][2]}:submit", sign(members[0], "ballot", {"ballot": YES}, pid), "application/cose", 400, "ProposalNotOpen"),
        ("ballot for another member", member2_ballot, sign(members[0], "ballot", {"ballot": YES}, open_pid), "application/cose", 401, "InvalidAuthenticationInfo"),
        ("malformed actions", "/gov/members/proposals:create", sign(members[0], "proposal", {"actions": [{"name": "set_user", "args": {"cert": 42}}]}), "application/cose", 400, "ProposalFailedToValidate"),
        ("unknown action", "/gov/members/proposals:create", sign(members[0], "proposal", {"actions": [{"name": "launch", "args": {}}]}), "application/cose", 400, "ProposalFailedToValidate"),
        ("proposal not JSON", "/gov/members/proposals:create", sign(members[0], "proposal", b"{actions"), "application/cose", 400, "InvalidProposal"),
        ("ballot that throws", member2_ballot, sign(members[2], "ballot", {"ballot": throw_ballot}, open_pid), "application/cose", 400, "BallotFailed"),
        ("ballot that runs forever", member2_ballot, sign(members[2], "ballot", {"ballot": loop_ballot}, open_pid), "application/cose", 400, "BallotFailed"),
        ("ballot with a syntax error", member2_ballot, sign(members[2], "ballot", {"ballot": "export function vote( {"}, open_pid), "application/cose", 400, "BallotFailed"),
        ("constitution with a syntax error", "/gov/members/proposals:create", sign(members[0], "proposal", {"actions": [{"name": "set_constitution", "args": {"constitution": "export function validate( {"}}]}), "application/cose", 400, "InvalidConstitution"),
        ("withdrawal by another member", f"/gov/members/proposals/{open_pid}:withdraw", sign(members[1], "withdrawal", b"", open_pid), "application/cose", 403, "AuthorizationFailed"),
        ("unknown proposal", f"/gov/members/proposals/{'0' * 64}/ballots/{members[0][2]}:submit", sign(members[0], "ballot", {"ballot": YES}, "0" * 64), "application/cose", 404, "ProposalNotFound"),
        ("wrong api-version", "/gov/members/proposals:create?api-version=2022-05-13", sign(members[0], "proposal", good), "application/cose", 400, "UnsupportedApiVersion"),
    ]
    for name, path, body, ct, status, code in cases:
        before = last_seqno()
        proposals_before = get("/gov/members/proposals").json()
        if "api-version" in path:
            r = requests.post(f"{endpoint}{path}", data=body, headers={"content-type": ct}, verify=service_cert, timeout=60)
        else:
            r = post(path, body, ct)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text}"
        err = r.json()["error"]
        assert err["code"] == code, f"{name}: {r.text}"
        assert err["message"], name
        assert last_seqno() == before, f"{name}: the ledger changed"
        assert get("/gov/members/proposals").json() == proposals_before, f"{name}: proposals changed"
        print(f"refused as expected: {name}: {r.status_code} {code}: {err['message'][:100]}")

    # The open proposal still works after all that.
    r = post(member2_ballot, sign(members[2], "ballot", {"ballot": YES}, open_pid))
    assert r.status_code == 200 and r.json()["proposalState"] == "Accepted", r.text
    print("gov_ccf OK")


if __name__ == "__main__":
    main()
