"""End-to-end with the unmodified Azure Confidential Ledger SDK against a running `ccl start`.
Usage: sdk_e2e.py ENDPOINT SERVICE_CERT USER_PEM. Prints "sdk e2e OK" on success."""

import hashlib
import sys

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
    print("sdk e2e OK")


if __name__ == "__main__":
    main()
