"""Supply-chain visibility with the unmodified Azure Confidential Ledger SDK (plus raw HTTPS for
ccl's access-list extension). supplier1 and retailer1 share a private collection; supplier2 and
retailer2 (and an Administrator not named in it) see neither its entries nor its existence
through any read endpoint; both parties read all of it; an auditor who cannot read the ledger
checks one entry from its receipt and application claims.

Usage: supply_chain.py ENDPOINTS SERVICE_CERT ADMIN_PEM MARKER TMPDIR
ENDPOINTS is a comma-separated list of node URLs: the parties talk to different nodes.
Every private entry's contents contain MARKER (the caller searches the data directories for it).
Prints "supply chain OK" on success."""

import json
import sys

import requests

from azure.confidentialledger import (
    ConfidentialLedgerCertificateCredential,
    ConfidentialLedgerClient,
)
from azure.confidentialledger.receipt import verify_receipt
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from identities import identity

API = "api-version=2022-05-13"
DEAL = "deal-7f3a"  # the private collection
NEVER = "deal-0000"  # a collection never written, same length


def main():
    endpoints, service_cert, admin_pem, marker, tmp = sys.argv[1:6]
    endpoints = endpoints.split(",")
    service_pem = open(service_cert).read()

    def sdk(pem, node):
        return ConfidentialLedgerClient(
            endpoints[node % len(endpoints)],
            credential=ConfidentialLedgerCertificateCredential(pem),
            ledger_certificate_path=service_cert,
        )

    def raw(pem, node, method, path, body=None):
        url = endpoints[node % len(endpoints)] + path + ("&" if "?" in path else "?") + API
        headers = {"content-type": "application/json"} if body is not None else {}
        data = json.dumps(body) if body is not None else None
        return requests.request(method, url, cert=pem, verify=service_cert, data=data, headers=headers, timeout=30)

    admin = sdk(admin_pem, 0)
    parties = {}
    for node, (name, role, groups) in enumerate([
        ("supplier1", "Contributor", ["supplier1"]),
        ("supplier2", "Contributor", ["supplier2"]),
        ("retailer1", "Contributor", ["retailer1"]),
        ("retailer2", "Contributor", ["retailer2"]),
        ("auditor", "Reader", ["auditors"]),
    ]):
        pem, uid = identity(tmp, name)
        # The SDK's PATCH carries ccl's `groups` beside the role.
        user = admin.create_or_update_user(uid, {"assignedRole": role, "groups": groups})
        assert user == {"assignedRole": role, "userId": uid, "groups": groups}, user
        parties[name] = (pem, uid, node)
    assert admin.get_user(parties["retailer1"][1])["groups"] == ["retailer1"]
    client = {name: sdk(pem, node) for name, (pem, _, node) in parties.items()}

    # supplier1 makes the deal's collection private to both parties' groups.
    s1_pem, _, s1_node = parties["supplier1"]
    r = raw(s1_pem, s1_node, "PUT", f"/app/collections/{DEAL}",
            {"writers": ["group:supplier1", "group:retailer1"], "readers": []})
    assert r.status_code == 200, r.text
    assert r.json()["private"] is True and r.json()["owner"] == parties["supplier1"][1].replace(":", "").lower(), r.text

    # Both parties write to it; supplier2 writes to a public collection.
    private = []
    for k, name in enumerate(["supplier1", "retailer1", "supplier1", "retailer1", "supplier1"]):
        contents = f"{marker} order {k} from {name}: 1000 units at 4.20"
        w = client[name].begin_create_ledger_entry({"contents": contents}, collection_id=DEAL).result()
        assert w["collectionId"] == DEAL, w
        private.append((w["transactionId"], contents))
    public = client["supplier2"].begin_create_ledger_entry({"contents": "supplier2 catalogue"}, collection_id="catalogue").result()
    last = public["transactionId"]
    for c in client.values():
        c.begin_wait_for_commit(last).result()
    admin.begin_wait_for_commit(last).result()

    # The parties read all of it, through the SDK, on their own nodes.
    for name in ["supplier1", "retailer1"]:
        c = client[name]
        listed = list(c.list_ledger_entries(collection_id=DEAL))
        assert [(e["transactionId"], e["contents"]) for e in listed] == private, (name, listed)
        ranged = list(c.list_ledger_entries(collection_id=DEAL, from_transaction_id=private[1][0], to_transaction_id=private[3][0]))
        assert [e["contents"] for e in ranged] == [p[1] for p in private[1:4]], ranged
        assert c.get_current_ledger_entry(collection_id=DEAL)["contents"] == private[-1][1]
        for txid, contents in private:
            e = c.begin_get_ledger_entry(txid, collection_id=DEAL).result()
            assert e["entry"]["contents"] == contents, e
            rec = c.begin_get_receipt(txid).result()
            verify_receipt(rec["receipt"], service_pem, application_claims=rec["applicationClaims"])
        assert DEAL in {x["collectionId"] for x in c.list_collections()}
        assert raw(parties[name][0], parties[name][2], "GET", f"/app/collections/{DEAL}").json()["private"] is True
    # The owner can change who reads it (and it stays private).
    r = raw(s1_pem, s1_node, "PUT", f"/app/collections/{DEAL}",
            {"writers": ["group:supplier1", "group:retailer1"], "readers": []})
    assert r.status_code == 200, r.text

    # Outsiders: supplier2, retailer2, the auditor and the Administrator (not named in the list).
    # Every read endpoint answers as for a collection that was never written.
    outsiders = [(n, parties[n][0], parties[n][2]) for n in ["supplier2", "retailer2", "auditor"]]
    outsiders.append(("administrator", admin_pem, 0))
    checked = 0
    for name, pem, node in outsiders:
        c = sdk(pem, node)
        # 1. get entry (with and without the collection id): not found, as a missing one.
        for txid, _ in private:
            for kwargs in [{}, {"collection_id": DEAL}]:
                try:
                    c.begin_get_ledger_entry(txid, **kwargs).result()
                    sys.exit(f"{name} read a private entry")
                except ResourceNotFoundError:
                    pass
            a = raw(pem, node, "GET", f"/app/transactions/{txid}")
            assert a.status_code == 404 and a.json()["error"]["code"] == "TransactionNotFound", a.text
            checked += 3
        # 2. receipts.
        for txid, _ in private:
            try:
                c.begin_get_receipt(txid).result()
                sys.exit(f"{name} got a private entry's receipt")
            except ResourceNotFoundError:
                pass
            checked += 1
        # 3. current entry: the same answer as a collection never written.
        a = raw(pem, node, "GET", f"/app/transactions/current?collectionId={DEAL}")
        b = raw(pem, node, "GET", f"/app/transactions/current?collectionId={NEVER}")
        assert a.status_code == b.status_code == 404, (a.text, b.text)
        assert a.text.replace(DEAL, NEVER) == b.text, (a.text, b.text)
        try:
            c.get_current_ledger_entry(collection_id=DEAL)
            sys.exit(f"{name} read a private current entry")
        except ResourceNotFoundError:
            pass
        checked += 2
        # 4. lists and ranges: empty, as a collection never written.
        assert list(c.list_ledger_entries(collection_id=DEAL)) == []
        assert list(c.list_ledger_entries(collection_id=DEAL, from_transaction_id=private[0][0], to_transaction_id=private[-1][0])) == []
        a = raw(pem, node, "GET", f"/app/transactions?collectionId={DEAL}")
        b = raw(pem, node, "GET", f"/app/transactions?collectionId={NEVER}")
        assert a.status_code == b.status_code == 200 and a.text == b.text, (a.text, b.text)
        checked += 3
        # 5. the collection list.
        assert DEAL not in {x["collectionId"] for x in c.list_collections()}
        checked += 1
        # 6. the collection itself.
        a = raw(pem, node, "GET", f"/app/collections/{DEAL}")
        b = raw(pem, node, "GET", f"/app/collections/{NEVER}")
        assert a.status_code == b.status_code == 404 and a.text.replace(DEAL, NEVER) == b.text, (a.text, b.text)
        checked += 1
        # 7. the default collection's list does not hold (or count) them.
        assert all(marker not in e["contents"] for e in c.list_ledger_entries()), name
        checked += 1
        # 8. no plaintext in any answer to this caller.
        for path in ["/app/transactions?collectionId=catalogue", "/app/collections", "/app/transactions/current"]:
            assert marker not in raw(pem, node, "GET", path).text
            checked += 1
    # An outsider cannot write to it, nor take it over.
    for name in ["supplier2", "retailer2"]:
        try:
            client[name].create_ledger_entry({"contents": "intrusion"}, collection_id=DEAL)
            sys.exit(f"{name} wrote to a private collection")
        except HttpResponseError as e:
            assert e.status_code == 403, e
        r = raw(parties[name][0], parties[name][2], "PUT", f"/app/collections/{DEAL}", {"readers": [parties[name][1]]})
        assert r.status_code == 409 and r.json()["error"]["code"] == "CollectionIdTaken", r.text
        checked += 2
    # A reader (not a writer) of a private collection reads and cannot write.
    r = raw(s1_pem, s1_node, "PUT", "/app/collections/deal-audit", {"writers": ["group:supplier1"], "readers": ["group:auditors"]})
    assert r.status_code == 200, r.text
    w = client["supplier1"].begin_create_ledger_entry({"contents": f"{marker} audited"}, collection_id="deal-audit").result()
    client["auditor"].begin_wait_for_commit(w["transactionId"]).result()
    assert client["auditor"].get_current_ledger_entry(collection_id="deal-audit")["contents"] == f"{marker} audited"
    try:
        client["auditor"].create_ledger_entry({"contents": "x"}, collection_id="deal-audit")
        sys.exit("a reader wrote")
    except HttpResponseError as e:
        assert e.status_code == 403, e
    # Bad access lists are refused.
    for body in [{"readers": "everyone"}, {"readers": ["group:"]}, {"owner": "me"}, [1]]:
        r = raw(s1_pem, s1_node, "PUT", "/app/collections/deal-bad", body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidAccessList", r.text
    assert raw(s1_pem, s1_node, "GET", "/app/collections/deal-bad").status_code == 404

    # The auditor, who cannot read the deal, checks one entry handed over with its receipt.
    txid, contents = private[2]
    handed = client["supplier1"].begin_get_receipt(txid).result()
    claims = handed["applicationClaims"]
    assert claims[0]["ledgerEntry"]["contents"] == contents, claims
    verify_receipt(handed["receipt"], service_pem, application_claims=claims)
    altered = [dict(claims[0], ledgerEntry=dict(claims[0]["ledgerEntry"], contents=contents.replace("4.20", "3.20")))]
    try:
        verify_receipt(handed["receipt"], service_pem, application_claims=altered)
        sys.exit("altered contents verified")
    except ValueError:
        pass
    print(f"supply chain OK ({checked} outsider checks)")


if __name__ == "__main__":
    main()
