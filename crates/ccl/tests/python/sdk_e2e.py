"""End-to-end with the unmodified Azure Confidential Ledger SDK against a running `ccl start`.
Usage: sdk_e2e.py ENDPOINT SERVICE_CERT USER_PEM. Prints "sdk e2e OK" on success."""

import datetime
import hashlib
import os
import sys
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from azure.confidentialledger import (
    ConfidentialLedgerCertificateCredential,
    ConfidentialLedgerClient,
)
from azure.confidentialledger.receipt import verify_receipt
from azure.core.exceptions import HttpResponseError


def main():
    endpoint, service_cert, user_pem = sys.argv[1:4]
    client = ConfidentialLedgerClient(
        endpoint,
        credential=ConfidentialLedgerCertificateCredential(user_pem),
        ledger_certificate_path=service_cert,
    )
    service_pem = open(service_cert).read()

    # Write and wait until committed.
    poller = client.begin_create_ledger_entry({"contents": "first entry"})
    result = poller.result()
    txid = result["transactionId"]
    assert result["collectionId"] == "subledger:0", result
    status = client.get_transaction_status(txid)
    assert status["state"] == "Committed", status

    # Read it back.
    entry = client.begin_get_ledger_entry(txid).result()
    assert entry["entry"]["contents"] == "first entry", entry
    assert entry["entry"]["transactionId"] == txid, entry

    # Receipt, verified by the SDK against the service certificate.
    receipt = client.begin_get_receipt(txid).result()
    assert receipt["transactionId"] == txid, receipt
    verify_receipt(receipt["receipt"], service_pem)
    # The entry is bound to the receipt by its application claims, as in Azure.
    claims = receipt["applicationClaims"]
    assert claims[0]["ledgerEntry"]["contents"] == "first entry", claims
    verify_receipt(receipt["receipt"], service_pem, application_claims=claims)
    forged = [dict(claims[0], ledgerEntry=dict(claims[0]["ledgerEntry"], contents="forged"))]
    try:
        verify_receipt(receipt["receipt"], service_pem, application_claims=forged)
        sys.exit("forged claims verified")
    except ValueError:
        pass

    # A second collection; current entries per collection.
    r2 = client.begin_create_ledger_entry({"contents": "in another collection"}, collection_id="orders").result()
    current = client.get_current_ledger_entry(collection_id="orders")
    assert current["contents"] == "in another collection", current
    assert current["transactionId"] == r2["transactionId"], (current, r2)
    assert client.get_current_ledger_entry()["contents"] == "first entry"

    # Governance reads.
    constitution = client.get_constitution()
    assert constitution["digest"] == hashlib.sha256(constitution["script"].encode()).hexdigest()
    members = client.list_consortium_members()
    assert len(list(members)) == 1

    # Bad input: 8193 bytes of contents are refused, 8192 accepted.
    try:
        client.create_ledger_entry({"contents": "x" * 8193})
        sys.exit("8193-byte contents were accepted")
    except HttpResponseError as e:
        assert e.status_code == 400 and "EntrySizeCapacityExceeded" in str(e), e
    client.create_ledger_entry({"contents": "x" * 8192})

    # Lists: more than 2,500 entries in one collection (pages of 1000), and ranges.
    txids = []
    for i in range(2600):
        r = client.create_ledger_entry({"contents": f"bulk {i}"}, collection_id="bulk")
        txids.append(r["transactionId"])
    client.begin_wait_for_commit(txids[-1]).result()
    listed = list(client.list_ledger_entries(collection_id="bulk"))
    assert [e["contents"] for e in listed] == [f"bulk {i}" for i in range(2600)], len(listed)
    assert [e["transactionId"] for e in listed] == txids
    part = list(client.list_ledger_entries(collection_id="bulk", from_transaction_id=txids[100], to_transaction_id=txids[1300]))
    assert [e["contents"] for e in part] == [f"bulk {i}" for i in range(100, 1301)], len(part)
    collections = {c["collectionId"] for c in client.list_collections()}
    assert collections == {"subledger:0", "orders", "bulk"}, collections

    # Users: a Reader can read, cannot write; deleting a user revokes access.
    reader_pem, reader_id = new_identity()
    user = client.create_or_update_user(reader_id, {"assignedRole": "Reader"})
    assert user == {"assignedRole": "Reader", "userId": reader_id}, user
    assert client.get_user(reader_id)["assignedRole"] == "Reader"
    reader = ConfidentialLedgerClient(
        endpoint, credential=ConfidentialLedgerCertificateCredential(reader_pem), ledger_certificate_path=service_cert
    )
    assert reader.get_current_ledger_entry()["contents"] == "x" * 8192
    try:
        reader.create_ledger_entry({"contents": "not allowed"})
        sys.exit("a Reader could write")
    except HttpResponseError as e:
        assert e.status_code == 403, e
    client.delete_user(reader_id)
    try:
        reader.get_current_ledger_entry()
        sys.exit("a deleted user could read")
    except HttpResponseError as e:
        assert e.status_code == 401, e

    quotes = client.get_enclave_quotes()
    assert quotes["currentNodeId"] in quotes["enclaveQuotes"], quotes
    print("sdk e2e OK")


def new_identity():
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reader")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA384())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    fingerprint = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    fd, path = tempfile.mkstemp(suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path, fingerprint


if __name__ == "__main__":
    main()
