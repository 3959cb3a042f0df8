"""Bad input and unauthorized callers against a running `ccl start`: each gets the documented
4xx JSON error, and the ledger is unchanged. Usage: bad_input.py ENDPOINT SERVICE_CERT USER_PEM TMPDIR."""

import datetime
import json
import os
import sys

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

API = "api-version=2022-05-13"


def stranger_pem(tmp):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )
    path = os.path.join(tmp, "stranger.pem")
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


def main():
    endpoint, service_cert, user_pem, tmp = sys.argv[1:5]
    s = requests.Session()
    s.verify = service_cert

    def call(method, path, cert=user_pem, **kw):
        return s.request(method, endpoint + path, cert=cert, verify=service_cert, timeout=10, **kw)

    commit_before = call("GET", "/node/commit").json()["transaction_id"]
    stranger = stranger_pem(tmp)
    good = {"headers": {"content-type": "application/json"}, "data": json.dumps({"contents": "ok"})}
    cases = [
        ("no client certificate", lambda: call("POST", f"/app/transactions?{API}", cert=None, **good), 401, "Unauthorized"),
        ("unknown certificate", lambda: call("POST", f"/app/transactions?{API}", cert=stranger, **good), 401, "Unauthorized"),
        ("malformed JSON", lambda: call("POST", f"/app/transactions?{API}", headers={"content-type": "application/json"}, data="{not json"), 400, "InvalidJson"),
        ("wrong content type", lambda: call("POST", f"/app/transactions?{API}", headers={"content-type": "text/plain"}, data="x"), 415, "UnsupportedContentType"),
        ("contents not a string", lambda: call("POST", f"/app/transactions?{API}", headers={"content-type": "application/json"}, data='{"contents": 5}'), 400, "InvalidEntry"),
        ("8193 bytes", lambda: call("POST", f"/app/transactions?{API}", headers={"content-type": "application/json"}, data=json.dumps({"contents": "x" * 8193})), 400, "EntrySizeCapacityExceeded"),
        ("257-byte collection", lambda: call("POST", f"/app/transactions?{API}&collectionId={'c' * 257}", **good), 400, "CollectionIdTooLong"),
        ("unknown api-version", lambda: call("POST", "/app/transactions?api-version=2019-01-01", **good), 400, "UnsupportedApiVersion"),
        ("no api-version", lambda: call("GET", "/app/transactions/1.1"), 400, "MissingApiVersion"),
        ("garbage transaction id", lambda: call("GET", f"/app/transactions/banana?{API}"), 400, "InvalidTransactionId"),
        ("garbage status id", lambda: call("GET", f"/app/transactions/1.x/status?{API}"), 400, "InvalidTransactionId"),
        ("unknown transaction id", lambda: call("GET", f"/app/transactions/9.999999/receipt?{API}"), 404, "TransactionNotFound"),
        ("oversize body", lambda: call("POST", f"/app/transactions?{API}", headers={"content-type": "application/json"}, data="x" * (1 << 20)), 413, None),
        ("unknown endpoint", lambda: call("GET", f"/app/nothing?{API}"), 404, "ResourceNotFound"),
        ("garbage commit wait", lambda: call("GET", "/node/commit?after=banana"), 400, "InvalidQueryParameterValue"),
        ("negative commit wait", lambda: call("GET", "/node/commit?after=-1"), 400, "InvalidQueryParameterValue"),
    ]
    for name, f, status, code in cases:
        r = f()
        assert r.status_code == status, f"{name}: {r.status_code} {r.text}"
        if code is not None:
            body = r.json()
            assert body["error"]["code"] == code, f"{name}: {body}"
            assert body["error"]["message"], name
    # Both TLS 1.2 and TLS 1.3 are served.
    import http.client, ssl, urllib.parse
    u = urllib.parse.urlparse(endpoint)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ssl.create_default_context(cafile=service_cert)
        ctx.minimum_version = ctx.maximum_version = version
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=10)
        conn.request("GET", "/node/commit")
        r = conn.getresponse()
        assert r.status == 200 and conn.sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version], (version, r.status)
        conn.close()
    # Waiting for a commit past the current one, when nothing commits: the node answers after
    # its maximum wait (1 s) with the commit as it is.
    import time
    seqno = int(commit_before.split(".")[1])
    started = time.monotonic()
    r = call("GET", f"/node/commit?after={seqno}")
    waited = time.monotonic() - started
    assert r.status_code == 200 and r.json()["transaction_id"] == commit_before, r.text
    assert waited >= 0.9, f"answered after {waited:.3f} s without a commit"
    # A commit already past: at once.
    r = call("GET", f"/node/commit?after={seqno - 1}")
    assert r.status_code == 200 and r.json()["transaction_id"] == commit_before, r.text
    commit_after = call("GET", "/node/commit").json()["transaction_id"]
    assert commit_before == commit_after, (commit_before, commit_after)
    print(f"bad input OK ({len(cases)} cases)")


if __name__ == "__main__":
    main()
