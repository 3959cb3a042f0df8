// ccl's default constitution.
//
// A proposal passes with the votes of a strict majority of the active members, and fails once a
// majority can no longer be reached. Actions are CCF's standard set (those that only write
// governance tables), plus set_user_role for Azure Confidential Ledger's user roles
// (Administrator, Contributor, Reader). Actions that change who votes or how (set_constitution,
// set_member, remove_member) drop every other open proposal: those were made under other rules.
//
// The constitution runs deterministically: no clock, no randomness. `ccf.kv` reads public maps;
// only apply may write, and only `public:ccf.gov.*` maps.

const MEMBER_CERTS = "public:ccf.gov.members.certs";
const MEMBER_INFO = "public:ccf.gov.members.info";
const MEMBER_KEYS = "public:ccf.gov.members.encryption_public_keys";
const MEMBER_ACKS = "public:ccf.gov.members.acks";
const USER_CERTS = "public:ccf.gov.users.certs";
const USER_INFO = "public:ccf.gov.users.info";
const PROPOSALS_INFO = "public:ccf.gov.proposals_info";
const CONSTITUTION = "public:ccf.gov.constitution";
const NODES = "public:ccf.gov.nodes.info";
const ROLES = ["Administrator", "Contributor", "Reader"];

function check(cond, message) {
  if (!cond) throw new Error(message);
}
function checkType(v, type, field) {
  check(typeof v === type, `${field} must be a ${type}`);
}
function checkOptionalType(v, type, field) {
  if (v !== undefined && v !== null) checkType(v, type, field);
}
function checkId(v, field) {
  checkType(v, "string", field);
  check(/^[0-9a-f]{64}$/.test(v), `${field} must be 64 lowercase hex digits (SHA-256 of a certificate)`);
}
function checkCert(v, field) {
  checkType(v, "string", field);
  check(ccf.crypto.isValidX509CertBundle(v), `${field} must be a PEM X.509 certificate`);
}
function checkKeys(args, allowed) {
  check(args !== null && typeof args === "object" && !Array.isArray(args), "args must be an object");
  for (const k of Object.keys(args)) check(allowed.includes(k), `unknown argument ${k}`);
}
function getJson(map, key) {
  const v = ccf.kv[map].get(ccf.strToBuf(key));
  return v === undefined ? undefined : ccf.bufToJsonCompatible(v);
}
function setJson(map, key, value) {
  ccf.kv[map].set(ccf.strToBuf(key), ccf.jsonCompatibleToBuf(value));
}
function activeMembers() {
  const active = new Set();
  ccf.kv[MEMBER_INFO].forEach((v, k) => {
    if (ccf.bufToJsonCompatible(v).status === "Active") active.add(ccf.bufToStr(k));
  });
  return active;
}
function dropOtherOpenProposals(proposalId) {
  ccf.kv[PROPOSALS_INFO].forEach((v, k) => {
    const id = ccf.bufToStr(k);
    const info = ccf.bufToJsonCompatible(v);
    if (id !== proposalId && info.state === "Open") {
      info.state = "Dropped";
      ccf.kv[PROPOSALS_INFO].set(k, ccf.jsonCompatibleToBuf(info));
    }
  });
}

class Action {
  constructor(validate, apply) {
    this.validate = validate;
    this.apply = apply;
  }
}

const actions = new Map([
  ["set_member", new Action(
    (args) => {
      checkKeys(args, ["cert", "encryption_pub_key", "member_data"]);
      checkCert(args.cert, "cert");
      checkOptionalType(args.encryption_pub_key, "string", "encryption_pub_key");
    },
    (args, proposalId) => {
      const id = ccf.pemToId(args.cert);
      ccf.kv[MEMBER_CERTS].set(ccf.strToBuf(id), ccf.strToBuf(args.cert));
      const previous = getJson(MEMBER_INFO, id);
      setJson(MEMBER_INFO, id, {
        status: previous ? previous.status : "Accepted",
        member_data: args.member_data ?? null,
      });
      if (args.encryption_pub_key) {
        ccf.kv[MEMBER_KEYS].set(ccf.strToBuf(id), ccf.strToBuf(args.encryption_pub_key));
      }
      dropOtherOpenProposals(proposalId);
    },
  )],
  ["remove_member", new Action(
    (args) => {
      checkKeys(args, ["member_id"]);
      checkId(args.member_id, "member_id");
    },
    (args, proposalId) => {
      const active = activeMembers();
      active.delete(args.member_id);
      check(active.size > 0, "the last active member cannot be removed");
      const key = ccf.strToBuf(args.member_id);
      for (const map of [MEMBER_CERTS, MEMBER_INFO, MEMBER_KEYS, MEMBER_ACKS]) ccf.kv[map].delete(key);
      dropOtherOpenProposals(proposalId);
    },
  )],
  ["set_member_data", new Action(
    (args) => {
      checkKeys(args, ["member_id", "member_data"]);
      checkId(args.member_id, "member_id");
    },
    (args) => {
      const info = getJson(MEMBER_INFO, args.member_id);
      check(info !== undefined, `no member ${args.member_id}`);
      info.member_data = args.member_data ?? null;
      setJson(MEMBER_INFO, args.member_id, info);
    },
  )],
  ["set_user", new Action(
    (args) => {
      checkKeys(args, ["cert", "user_data"]);
      checkCert(args.cert, "cert");
      if (args.user_data && args.user_data.assignedRole !== undefined) {
        check(ROLES.includes(args.user_data.assignedRole), `assignedRole must be one of ${ROLES}`);
      }
    },
    (args) => {
      const id = ccf.pemToId(args.cert);
      ccf.kv[USER_CERTS].set(ccf.strToBuf(id), ccf.strToBuf(args.cert));
      if (args.user_data !== undefined && args.user_data !== null) {
        setJson(USER_INFO, id, { user_data: args.user_data });
      }
    },
  )],
  ["remove_user", new Action(
    (args) => {
      checkKeys(args, ["user_id"]);
      checkType(args.user_id, "string", "user_id");
    },
    (args) => {
      const key = ccf.strToBuf(args.user_id);
      ccf.kv[USER_CERTS].delete(key);
      ccf.kv[USER_INFO].delete(key);
    },
  )],
  ["set_user_data", new Action(
    (args) => {
      checkKeys(args, ["user_id", "user_data"]);
      checkType(args.user_id, "string", "user_id");
    },
    (args) => {
      if (args.user_data === undefined || args.user_data === null) {
        ccf.kv[USER_INFO].delete(ccf.strToBuf(args.user_id));
      } else {
        setJson(USER_INFO, args.user_id, { user_data: args.user_data });
      }
    },
  )],
  // ccl's extension: a private collection's access list (readers and writers: user ids or
  // group:<name>), set by the members. The proposal, with the lists, is public in the ledger;
  // the access list itself goes to a private map.
  ["set_collection_access", new Action(
    (args) => {
      checkKeys(args, ["collection_id", "owner", "readers", "writers"]);
      checkType(args.collection_id, "string", "collection_id");
      check(args.collection_id.length > 0 && args.collection_id.length <= 256, "collection_id has 1 to 256 characters");
      checkOptionalType(args.owner, "string", "owner");
      for (const f of ["readers", "writers"]) {
        if (args[f] !== undefined && args[f] !== null) {
          check(Array.isArray(args[f]) && args[f].every((x) => typeof x === "string"), `${f} must be an array of strings`);
        }
      }
    },
    (args) => {
      ccf.node.setCollectionAccess({
        collection_id: args.collection_id,
        owner: args.owner ?? "",
        readers: args.readers ?? [],
        writers: args.writers ?? [],
      });
    },
  )],
  ["set_user_role", new Action(
    (args) => {
      checkKeys(args, ["user_id", "role"]);
      checkType(args.user_id, "string", "user_id");
      check(ROLES.includes(args.role), `role must be one of ${ROLES}`);
    },
    (args) => {
      const info = getJson(USER_INFO, args.user_id) ?? { user_data: {} };
      info.user_data = Object.assign({}, info.user_data, { assignedRole: args.role });
      setJson(USER_INFO, args.user_id, info);
    },
  )],
  ["set_constitution", new Action(
    (args) => {
      checkKeys(args, ["constitution"]);
      checkType(args.constitution, "string", "constitution");
    },
    (args, proposalId) => {
      ccf.kv[CONSTITUTION].set(new ArrayBuffer(8), ccf.strToBuf(args.constitution));
      dropOtherOpenProposals(proposalId);
    },
  )],
  ["transition_service_to_open", new Action(
    (args) => {
      checkKeys(args, ["next_service_identity", "previous_service_identity"]);
      checkOptionalType(args.next_service_identity, "string", "next_service_identity");
      checkOptionalType(args.previous_service_identity, "string", "previous_service_identity");
    },
    (args) => ccf.node.transitionServiceToOpen(args.previous_service_identity, args.next_service_identity),
  )],
  ["trigger_ledger_rekey", new Action(
    (args) => checkKeys(args, []),
    () => ccf.node.triggerLedgerRekey(),
  )],
  ["trigger_snapshot", new Action(
    (args) => checkKeys(args, []),
    () => ccf.node.triggerSnapshot(),
  )],
  // Not yet carried out by ccl: refused at validation rather than accepted and ignored.
  ["trigger_recovery_shares_refresh", new Action(
    (args) => checkKeys(args, []),
    () => ccf.node.triggerRecoverySharesRefresh(),
  )],
  ...["set_node_certificate_validity", "set_service_certificate_validity"].map((name) => [name, new Action(
    () => { throw new Error(`${name} is not supported by this version of ccl`); },
    () => { throw new Error(`${name} is not supported by this version of ccl`); },
  )]),
  ["transition_node_to_trusted", new Action(
    (args) => {
      checkKeys(args, ["node_id", "valid_from", "validity_period_days"]);
      checkId(args.node_id, "node_id");
    },
    (args) => {
      const info = getJson(NODES, args.node_id);
      check(info !== undefined, `no node ${args.node_id}`);
      check(info.status === "Pending", `node ${args.node_id} is ${info.status}, not Pending`);
      info.status = "Trusted";
      setJson(NODES, args.node_id, info);
    },
  )],
  ["remove_node", new Action(
    (args) => {
      checkKeys(args, ["node_id"]);
      checkId(args.node_id, "node_id");
    },
    (args) => {
      const info = getJson(NODES, args.node_id);
      if (info !== undefined) {
        info.status = "Retired";
        setJson(NODES, args.node_id, info);
      }
    },
  )],
  ["set_node_data", new Action(
    (args) => {
      checkKeys(args, ["node_id", "node_data"]);
      checkId(args.node_id, "node_id");
    },
    (args) => {
      const info = getJson(NODES, args.node_id);
      check(info !== undefined, `no node ${args.node_id}`);
      info.node_data = args.node_data ?? null;
      setJson(NODES, args.node_id, info);
    },
  )],
  ["set_recovery_threshold", new Action(
    (args) => {
      checkKeys(args, ["recovery_threshold"]);
      check(Number.isInteger(args.recovery_threshold) && args.recovery_threshold >= 1 &&
        args.recovery_threshold <= 255, "recovery_threshold must be an integer from 1 to 255");
    },
    (args) => setJson("public:ccf.gov.recovery_threshold", "threshold", args.recovery_threshold),
  )],
  ...["snp_measurement", "snp_host_data"].flatMap((what) => [
    [`add_${what}`, new Action(
      (args) => {
        checkKeys(args, what === "snp_measurement" ? ["measurement"] : ["host_data", "metadata"]);
        const v = what === "snp_measurement" ? args.measurement : args.host_data;
        checkType(v, "string", what === "snp_measurement" ? "measurement" : "host_data");
        check(/^[0-9a-f]+$/.test(v), "a hex string is expected");
      },
      (args) => {
        const v = what === "snp_measurement" ? args.measurement : args.host_data;
        setJson(`public:ccf.gov.nodes.snp.${what === "snp_measurement" ? "measurements" : "host_data"}`,
          v, what === "snp_measurement" ? "AllowedToJoin" : (args.metadata ?? ""));
      },
    )],
    [`remove_${what}`, new Action(
      (args) => {
        checkKeys(args, what === "snp_measurement" ? ["measurement"] : ["host_data"]);
        checkType(what === "snp_measurement" ? args.measurement : args.host_data, "string", "value");
      },
      (args) => {
        const v = what === "snp_measurement" ? args.measurement : args.host_data;
        ccf.kv[`public:ccf.gov.nodes.snp.${what === "snp_measurement" ? "measurements" : "host_data"}`]
          .delete(ccf.strToBuf(v));
      },
    )],
  ]),
  ["set_snp_minimum_tcb_version", new Action(
    (args) => {
      checkKeys(args, ["cpuid", "tcb_version"]);
      checkType(args.cpuid, "string", "cpuid");
      check(typeof args.tcb_version === "object" && args.tcb_version !== null, "tcb_version must be an object");
    },
    (args) => setJson("public:ccf.gov.nodes.snp.tcb_versions", args.cpuid, args.tcb_version),
  )],
  ["set_jwt_issuer", new Action(
    (args) => {
      checkType(args.issuer, "string", "issuer");
    },
    (args) => setJson("public:ccf.gov.jwt.issuers", args.issuer, args),
  )],
  ["remove_jwt_issuer", new Action(
    (args) => {
      checkKeys(args, ["issuer"]);
      checkType(args.issuer, "string", "issuer");
    },
    (args) => ccf.kv["public:ccf.gov.jwt.issuers"].delete(ccf.strToBuf(args.issuer)),
  )],
  ["set_ca_cert_bundle", new Action(
    (args) => {
      checkKeys(args, ["name", "cert_bundle"]);
      checkType(args.name, "string", "name");
      checkCert(args.cert_bundle, "cert_bundle");
    },
    (args) => ccf.kv["public:ccf.gov.tls.ca_cert_bundles"].set(ccf.strToBuf(args.name), ccf.strToBuf(args.cert_bundle)),
  )],
  ["set_service_configuration", new Action(
    (args) => check(typeof args === "object" && args !== null, "args must be an object"),
    (args) => {
      const config = getJson("public:ccf.gov.service.config", "config") ?? {};
      setJson("public:ccf.gov.service.config", "config", Object.assign(config, args));
    },
  )],
]);

export function validate(input) {
  let proposal;
  try {
    proposal = JSON.parse(input);
  } catch (e) {
    return { valid: false, description: `the proposal is not JSON: ${e.message}` };
  }
  if (proposal === null || typeof proposal !== "object" || !Array.isArray(proposal.actions)) {
    return { valid: false, description: "a proposal is {\"actions\": [{\"name\", \"args\"}, ...]}" };
  }
  if (proposal.actions.length === 0) {
    return { valid: false, description: "the proposal has no actions" };
  }
  const errors = [];
  proposal.actions.forEach((action, i) => {
    const definition = action && actions.get(action.name);
    if (definition === undefined) {
      errors.push(`action ${i}: unknown action ${JSON.stringify(action && action.name)}`);
      return;
    }
    try {
      definition.validate(action.args ?? {});
    } catch (e) {
      errors.push(`action ${i} (${action.name}): ${e.message}`);
    }
  });
  return errors.length === 0 ? { valid: true } : { valid: false, description: errors.join("; ") };
}

export function resolve(proposal, proposerId, votes) {
  const active = activeMembers();
  const needed = Math.floor(active.size / 2) + 1;
  let yes = 0;
  let no = 0;
  for (const v of votes) {
    if (!active.has(v.member_id)) continue;
    if (v.vote) yes++;
    else no++;
  }
  if (yes >= needed) return "Accepted";
  if (no > active.size - needed) return "Rejected";
  return "Open";
}

export function apply(proposal, proposalId) {
  for (const action of JSON.parse(proposal).actions) {
    actions.get(action.name).apply(action.args ?? {}, proposalId);
  }
}
