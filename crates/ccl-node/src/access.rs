//! Private collections: who may see and write a collection's entries.
//!
//! A collection is public — every user reads it according to their role, as in Azure
//! Confidential Ledger — until it is given an access list (`PUT /app/collections/{id}`). From
//! then on it is private: only its owner, its writers and its readers see anything of it, and
//! only the owner and the writers write to it. Readers and writers are user ids (an Azure user
//! id or CCF's lowercase hex certificate id) or `group:<name>`, which names every user whose
//! `user_data.groups` lists `<name>`. To everyone else the collection does not exist: its
//! entries, receipts, current entry, listing and its place in the collection list answer
//! exactly as for a collection that was never written.
//!
//! Access lists live in the private map [`ACCESS`] (encrypted in every ledger and snapshot
//! file), so who shares a collection with whom is itself confidential; every change is a
//! transaction of the ledger. Group membership is user data (`public:ccf.gov.users.info`).
//!
//! Existence is hidden from reads, not from name clashes: a caller who tries to create or
//! write to a taken name learns that it is taken. Choose names that say nothing.

use crate::api::ApiError;
use axum::http::StatusCode;
use ccl_store::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Access lists of private collections: key collection id, value [`Access`] as JSON.
pub const ACCESS: &str = "ccl.app.collection_access";
/// Most readers plus writers of one collection.
pub const MAX_PRINCIPALS: usize = 64;
/// Most groups a user belongs to.
pub const MAX_GROUPS_PER_USER: usize = 32;
/// Longest group name (ASCII letters, digits, `.`, `_`, `-`).
pub const MAX_GROUP_NAME: usize = 64;
/// Prefix of a group in an access list.
pub const GROUP_PREFIX: &str = "group:";

/// A private collection's access list.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The user who made the collection private (CCF user id); may change the list.
    pub owner: String,
    pub readers: Vec<String>,
    pub writers: Vec<String>,
}

/// A caller as access lists see it: user id and groups.
pub struct Principal {
    id: String,
    groups: Vec<String>,
}

impl Principal {
    /// The user `id` (CCF user id) with the groups of its user data in `state`.
    pub fn of(state: &State, id: &str) -> Principal {
        let groups = state
            .get(crate::maps::USER_INFO, id.as_bytes())
            .and_then(|v| serde_json::from_slice::<Value>(&v.value).ok())
            .map(|u| groups_in(&u["user_data"]))
            .unwrap_or_default();
        Principal {
            id: id.to_string(),
            groups,
        }
    }

    fn named_by(&self, entry: &str) -> bool {
        match entry.strip_prefix(GROUP_PREFIX) {
            Some(g) => self.groups.iter().any(|m| m == g),
            None => entry == self.id,
        }
    }
}

/// The groups listed in user data (`{"groups": [...]}`); anything malformed names none.
pub fn groups_in(user_data: &Value) -> Vec<String> {
    user_data["groups"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl Access {
    pub fn may_read(&self, p: &Principal) -> bool {
        self.may_write(p) || self.readers.iter().any(|r| p.named_by(r))
    }

    pub fn may_write(&self, p: &Principal) -> bool {
        self.owner == p.id || self.writers.iter().any(|w| p.named_by(w))
    }
}

/// The access list of `collection`: `None` for a public collection. A stored list that does
/// not parse admits no one (deny by default).
pub fn access_of(state: &State, collection: &str) -> Option<Access> {
    let v = state.get(ACCESS, collection.as_bytes())?;
    Some(serde_json::from_slice(&v.value).unwrap_or(Access {
        owner: String::new(),
        readers: Vec::new(),
        writers: Vec::new(),
    }))
}

/// Whether user `caller` may see `collection` (anything of it).
pub fn may_read(state: &State, caller: &str, collection: &str) -> bool {
    access_of(state, collection).is_none_or(|a| a.may_read(&Principal::of(state, caller)))
}

/// Whether user `caller` may write to `collection` (its role permitting).
pub fn may_write(state: &State, caller: &str, collection: &str) -> bool {
    access_of(state, collection).is_none_or(|a| a.may_write(&Principal::of(state, caller)))
}

fn valid_group(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_GROUP_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The `readers` or `writers` of a request: user ids (normalized to CCF ids) and groups.
pub fn parse_principals(body: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    let bad = |m: String| ApiError::bad("InvalidAccessList", m);
    let items = match &body[field] {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        _ => {
            return Err(bad(format!(
                "{field} must be an array of user ids and groups"
            )));
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let s = item
            .as_str()
            .ok_or_else(|| bad(format!("{field} holds strings: user ids or group:<name>")))?;
        let p = match s.strip_prefix(GROUP_PREFIX) {
            Some(g) if valid_group(g) => s.to_string(),
            Some(_) => {
                return Err(bad(format!(
                    "{s:?}: a group name has 1 to {MAX_GROUP_NAME} letters, digits, '.', '_' or '-'"
                )));
            }
            None => {
                crate::api::check_user_id(s)?;
                ccl_gov::user_key(s)
            }
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// The `groups` of a user update, if present.
pub fn parse_groups(body: &Value) -> Result<Option<Vec<String>>, ApiError> {
    let bad = |m: String| ApiError::bad("InvalidGroups", m);
    let items = match &body["groups"] {
        Value::Null => return Ok(None),
        Value::Array(a) => a,
        _ => return Err(bad("groups must be an array of group names".into())),
    };
    if items.len() > MAX_GROUPS_PER_USER {
        return Err(bad(format!(
            "a user belongs to at most {MAX_GROUPS_PER_USER} groups"
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item.as_str() {
            Some(g) if valid_group(g) => {
                if !out.iter().any(|o| o == g) {
                    out.push(g.to_string());
                }
            }
            _ => {
                return Err(bad(format!(
                    "a group name has 1 to {MAX_GROUP_NAME} letters, digits, '.', '_' or '-'"
                )));
            }
        }
    }
    Ok(Some(out))
}

/// The new access list of `PUT /app/collections/{id}`, checked.
pub fn parse_access(body: &Value, owner: String) -> Result<Access, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad(
            "InvalidAccessList",
            "the body must be {\"readers\": [...], \"writers\": [...]}",
        ));
    }
    if let Some(k) = body
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "readers" && *k != "writers"))
    {
        return Err(ApiError::bad(
            "InvalidAccessList",
            format!("unknown field {k:?}: the body has readers and writers"),
        ));
    }
    let readers = parse_principals(body, "readers")?;
    let writers = parse_principals(body, "writers")?;
    if readers.len() + writers.len() > MAX_PRINCIPALS {
        return Err(ApiError::bad(
            "InvalidAccessList",
            format!("a collection has at most {MAX_PRINCIPALS} readers and writers"),
        ));
    }
    Ok(Access {
        owner,
        readers,
        writers,
    })
}

/// The constitution's `set_collection_access` (`ccf.node.setCollectionAccess`): writes an access
/// list chosen by the members. `owner` may be empty (only Administrators and the members change
/// the list then).
pub fn set_by_governance(tx: &mut ccl_store::Tx, effect: &str) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::bad("InvalidAccessList", m);
    let v: Value = serde_json::from_str(effect).map_err(|e| bad(e.to_string()))?;
    let coll = v["collection_id"]
        .as_str()
        .filter(|c| !c.is_empty() && c.len() <= crate::api::MAX_COLLECTION_ID)
        .ok_or_else(|| bad("collection_id must be a collection id".into()))?
        .to_string();
    if coll == crate::api::DEFAULT_COLLECTION {
        return Err(bad(format!(
            "{coll} is the default collection: it stays public"
        )));
    }
    let owner = match v["owner"].as_str().unwrap_or_default() {
        "" => String::new(),
        o => {
            crate::api::check_user_id(o)?;
            ccl_gov::user_key(o)
        }
    };
    let lists = serde_json::json!({"readers": v["readers"], "writers": v["writers"]});
    let access = parse_access(&lists, owner)?;
    write(tx, &coll, &access)
}

/// Writes `collection`'s access list, registering the collection if it is new.
pub fn write(tx: &mut ccl_store::Tx, coll: &str, access: &Access) -> Result<(), ApiError> {
    crate::api::register_collection(tx, coll)?;
    let bytes = serde_json::to_vec(access).map_err(ApiError::internal)?;
    tx.put(ACCESS, coll.as_bytes(), &bytes)
        .map_err(ApiError::internal)
}

/// The answer for a collection that the caller may not see, or that does not exist.
pub fn collection_not_found(collection: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "CollectionNotFound",
        format!("no collection {collection}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(id: &str, groups: &[&str]) -> Principal {
        Principal {
            id: id.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn owner_writers_readers_and_groups() {
        let a = Access {
            owner: "o".into(),
            readers: vec!["r".into(), "group:auditors".into()],
            writers: vec!["w".into(), "group:supplier1".into()],
        };
        assert!(a.may_write(&p("o", &[])) && a.may_read(&p("o", &[])));
        assert!(a.may_write(&p("w", &[])) && a.may_read(&p("w", &[])));
        assert!(!a.may_write(&p("r", &[])) && a.may_read(&p("r", &[])));
        assert!(a.may_write(&p("x", &["supplier1"])));
        assert!(!a.may_write(&p("x", &["auditors"])) && a.may_read(&p("x", &["auditors"])));
        assert!(!a.may_read(&p("x", &["supplier2"])));
        // A user id that looks like a group entry does not match the group.
        assert!(!a.may_read(&p("group:auditors", &[])));
    }

    #[test]
    fn requests_are_checked() {
        let id = "AB:".repeat(31) + "AB";
        let a = parse_access(
            &json!({"readers": [id, "group:auditors", "group:auditors"], "writers": []}),
            "o".into(),
        )
        .unwrap();
        assert_eq!(
            a.readers,
            vec!["ab".repeat(32), "group:auditors".to_string()]
        );
        for bad in [
            json!([]),
            json!({"readers": "x"}),
            json!({"readers": [5]}),
            json!({"readers": ["group:"]}),
            json!({"readers": ["group:a b"]}),
            json!({"readers": [""]}),
            json!({"owner": "me"}),
            json!({"readers": (0..65).map(|i| format!("u{i}")).collect::<Vec<_>>()}),
        ] {
            assert!(parse_access(&bad, "o".into()).is_err(), "{bad}");
        }
        assert_eq!(parse_groups(&json!({})).unwrap(), None);
        assert_eq!(
            parse_groups(&json!({"groups": ["a", "a", "b"]})).unwrap(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert!(parse_groups(&json!({"groups": ["x y"]})).is_err());
        assert!(parse_groups(&json!({"groups": vec!["g"; 33]})).is_err());
    }
}
