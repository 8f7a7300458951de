//! Merges several config files into one JSON document, in the order given.
//!
//! Objects merge key by key and a later scalar (or array) wins, except for three lists:
//! `inbounds` and `outbounds` are concatenated, an entry whose non-empty `tag` matches one from
//! an earlier file replacing it in place, and `routing.rules` (and `routing.balancers`) are
//! concatenated.

use serde_json::{Map, Value};

/// Merges `next` (a later file) into `base`.
pub(super) fn merge_config(base: &mut Map<String, Value>, next: Map<String, Value>) {
    for (key, value) in next {
        match (key.as_str(), base.get_mut(&key), value) {
            ("inbounds" | "outbounds", Some(Value::Array(old)), Value::Array(new)) => merge_tagged(old, new),
            ("routing", Some(Value::Object(old)), Value::Object(new)) => merge_routing(old, new),
            (_, Some(Value::Object(old)), Value::Object(new)) => merge_objects(old, new),
            (_, _, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Appends `new` to `old`; an entry tagged like one already in `old` replaces that one.
fn merge_tagged(old: &mut Vec<Value>, new: Vec<Value>) {
    // Only entries from earlier files are replaced: a duplicate within one file stays a
    // duplicate, for validation to report.
    let earlier = old.len();
    for item in new {
        let slot = tag_of(&item).and_then(|tag| old[..earlier].iter().position(|o| tag_of(o) == Some(tag)));
        match slot {
            Some(at) => old[at] = item,
            None => old.push(item),
        }
    }
}

fn tag_of(item: &Value) -> Option<&str> {
    item.get("tag").and_then(Value::as_str).filter(|t| !t.is_empty())
}

fn merge_routing(old: &mut Map<String, Value>, new: Map<String, Value>) {
    for (key, value) in new {
        match (key.as_str(), old.get_mut(&key), value) {
            ("rules" | "balancers", Some(Value::Array(list)), Value::Array(more)) => list.extend(more),
            (_, Some(Value::Object(o)), Value::Object(n)) => merge_objects(o, n),
            (_, _, value) => {
                old.insert(key, value);
            }
        }
    }
}

/// Key-by-key merge: nested objects merge, anything else from `new` replaces.
fn merge_objects(old: &mut Map<String, Value>, new: Map<String, Value>) {
    for (key, value) in new {
        match (old.get_mut(&key), value) {
            (Some(Value::Object(o)), Value::Object(n)) => merge_objects(o, n),
            (_, value) => {
                old.insert(key, value);
            }
        }
    }
}
