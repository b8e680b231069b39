//! Field ownership, as Kubernetes' server-side apply keeps it in `managedFields`: which field manager
//! set which fields of an object's labels, annotations and spec. Lists are atomic (as in Knative's
//! CRDs, whose lists declare no merge keys), maps and objects are merged field by field.
//!
//! - An apply sets the fields of its configuration; a field another manager owns with a different
//!   value is a conflict, unless forced (then the other manager loses it). A field the applier owned
//!   and now leaves out is removed, unless another manager owns it too.
//! - An update (create, replace, merge or JSON patch) makes its manager the owner of every field it
//!   changed, and no one else's.
//!
//! Pure functions over JSON; the admission code calls them inside its store transaction.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use revisor_api::ManagedFieldsEntry;
use serde_json::{json, Map, Value};

/// A field: the keys from the object's root (`["spec", "traffic"]`).
pub type FieldPath = Vec<String>;

/// Fields a manager owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeSet<FieldPath>);

/// A field another manager owns, which an apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}

/// `.spec.traffic`, as Kubernetes writes a field in a conflict.
pub fn display(path: &[String]) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

impl FieldSet {
    /// The user's fields of an object or apply configuration: `metadata.labels`,
    /// `metadata.annotations` and `spec`, down to scalars and lists.
    pub fn of(v: &Value) -> FieldSet {
        let mut out = BTreeSet::new();
        for (root, key) in [("metadata", "labels"), ("metadata", "annotations")] {
            if let Some(m) = v.get(root).and_then(|m| m.get(key)) {
                leaves(m, vec![root.into(), key.into()], &mut out);
            }
        }
        if let Some(spec) = v.get("spec") {
            leaves(spec, vec!["spec".into()], &mut out);
        }
        FieldSet(out)
    }

    /// The fields whose values differ between `old` and `new` (all of `new`'s when there is no old).
    pub fn changed(old: Option<&Value>, new: &Value) -> FieldSet {
        let after = FieldSet::of(new);
        let Some(old) = old else {
            return after;
        };
        let before = FieldSet::of(old);
        FieldSet(
            before
                .0
                .union(&after.0)
                .filter(|p| get(old, p) != get(new, p))
                .cloned()
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn paths(&self) -> impl Iterator<Item = &FieldPath> {
        self.0.iter()
    }

    /// Whether a field of this set is `p`, inside it, or holds it.
    pub fn overlaps(&self, p: &[String]) -> bool {
        self.0.iter().any(|q| q.starts_with(p) || p.starts_with(q))
    }

    fn remove_overlapping(&mut self, p: &[String]) {
        self.0.retain(|q| !(q.starts_with(p) || p.starts_with(q)));
    }

    /// As `fieldsV1`: `{"f:spec": {"f:traffic": {}}}`.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for p in &self.0 {
            let mut node = &mut root;
            for k in p {
                node = node
                    .entry(format!("f:{k}"))
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("only objects are inserted");
            }
        }
        Value::Object(root)
    }

    /// From `fieldsV1` as [`FieldSet::to_fields_v1`] writes it (`.` entries, which Kubernetes adds
    /// for a map itself, are skipped).
    pub fn from_fields_v1(v: &Value) -> FieldSet {
        fn walk(v: &Value, path: FieldPath, out: &mut BTreeSet<FieldPath>) {
            let Some(o) = v.as_object() else { return };
            let children: Vec<_> = o.iter().filter_map(|(k, x)| Some((k.strip_prefix("f:")?, x))).collect();
            if children.is_empty() {
                if !path.is_empty() {
                    out.insert(path);
                }
                return;
            }
            for (k, x) in children {
                let mut p = path.clone();
                p.push(k.to_string());
                walk(x, p, out);
            }
        }
        let mut out = BTreeSet::new();
        walk(v, vec![], &mut out);
        FieldSet(out)
    }
}

/// The leaves under `v`: scalars and (atomic) lists. An empty object or a null claims nothing, as
/// in an apply configuration they set no field.
fn leaves(v: &Value, path: FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        // A null sets nothing and owns nothing.
        Value::Null => {}
        Value::Object(o) => {
            for (k, x) in o {
                let mut p = path.clone();
                p.push(k.clone());
                leaves(x, p, out);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |node, k| node.get(k))
}

fn set(v: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = v;
    for k in parents {
        if !node.get(k).is_some_and(Value::is_object) {
            node[k.as_str()] = json!({});
        }
        node = &mut node[k.as_str()];
    }
    node[last.as_str()] = value;
}

fn remove(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = v;
    for k in parents {
        match node.get_mut(k) {
            Some(n) => node = n,
            None => return,
        }
    }
    if let Some(o) = node.as_object_mut() {
        o.remove(last);
    }
}

/// One manager's entry, read.
#[derive(Debug, Clone)]
struct Owner {
    manager: String,
    operation: String,
    time: Option<DateTime<Utc>>,
    fields: FieldSet,
}

fn owners(entries: &[ManagedFieldsEntry]) -> Vec<Owner> {
    entries
        .iter()
        .map(|e| Owner {
            manager: e.manager.clone(),
            operation: e.operation.clone(),
            time: e.time,
            fields: e.fields_v1.as_ref().map(FieldSet::from_fields_v1).unwrap_or_default(),
        })
        .collect()
}

fn entries(owners: Vec<Owner>, api_version: &str) -> Vec<ManagedFieldsEntry> {
    owners
        .into_iter()
        .filter(|o| !o.fields.is_empty())
        .map(|o| ManagedFieldsEntry {
            manager: o.manager,
            operation: o.operation,
            api_version: Some(api_version.to_string()),
            time: o.time,
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(o.fields.to_fields_v1()),
        })
        .collect()
}

/// Sets `fields` as `manager`'s for `operation`, stamping the time when they changed.
fn own(owners: &mut Vec<Owner>, manager: &str, operation: &str, fields: FieldSet, now: DateTime<Utc>) {
    match owners
        .iter_mut()
        .find(|o| o.manager == manager && o.operation == operation)
    {
        Some(o) if o.fields == fields => {}
        Some(o) => {
            o.fields = fields;
            o.time = Some(now);
        }
        None => owners.push(Owner {
            manager: manager.to_string(),
            operation: operation.to_string(),
            time: Some(now),
            fields,
        }),
    }
}

/// What an apply of `config` by `manager` makes of `live` (the stored object, `None` to create it):
/// the object to admit and the managed fields to keep, or the conflicts.
///
/// `adopts_unowned`: whether this manager owned, before, every field that no one is recorded to own in
/// an object written before revisor kept managed fields (`revisor apply`'s did). Any other manager's
/// first apply removes nothing.
///
/// `settled`: the merged object as admission leaves it (defaults filled in), when known: a field
/// conflicts only if the apply changes its settled value, so applying a manifest again never
/// conflicts over the defaults the server added.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    live: Option<&Value>,
    managed: &[ManagedFieldsEntry],
    config: &Value,
    manager: &str,
    force: bool,
    adopts_unowned: bool,
    settled: Option<&Value>,
    now: DateTime<Utc>,
) -> Result<(Value, Vec<ManagedFieldsEntry>), Vec<Conflict>> {
    let api_version = config
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut owners = owners(managed);
    let applied = FieldSet::of(config);
    let mut object = match live {
        Some(l) => {
            let mut o = json!({
                "apiVersion": config["apiVersion"],
                "kind": config["kind"],
                "metadata": { "name": l["metadata"]["name"], "namespace": l["metadata"]["namespace"] },
                "spec": l.get("spec").cloned().unwrap_or(json!({})),
            });
            for key in ["labels", "annotations"] {
                if let Some(m) = l["metadata"].get(key).filter(|m| !m.is_null()) {
                    o["metadata"][key] = m.clone();
                }
            }
            o
        }
        None => json!({
            "apiVersion": config["apiVersion"],
            "kind": config["kind"],
            "metadata": { "name": config["metadata"]["name"], "namespace": config["metadata"]["namespace"] },
        }),
    };
    if let Some(v) = config.pointer("/metadata/resourceVersion") {
        object["metadata"]["resourceVersion"] = v.clone();
    }

    // Conflicts: a field this apply sets to another value than another manager gave it.
    let mut conflicts = Vec::new();
    let wanted = settled.unwrap_or(config);
    let differing: Vec<&FieldPath> = applied.paths().filter(|p| get(&object, p) != get(wanted, p)).collect();
    for o in owners.iter().filter(|o| o.manager != manager) {
        for p in &differing {
            if o.fields.overlaps(p) {
                conflicts.push(Conflict {
                    manager: o.manager.clone(),
                    field: display(p),
                });
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflicts);
        }
        for o in owners.iter_mut().filter(|o| o.manager != manager) {
            for p in &differing {
                o.fields.remove_overlapping(p);
            }
        }
    }

    // What the applier set before and leaves out now goes, unless someone else owns it too. An
    // object written before revisor kept managed fields (at most `spec.traffic` is recorded) was
    // `revisor apply`'s, all of it but what others own.
    let legacy = adopts_unowned
        && !owners.iter().any(|o| o.manager == manager)
        && owners.iter().all(|o| {
            o.fields
                .paths()
                .all(|p| p.starts_with(&["spec".into(), "traffic".into()]))
        });
    let before = match owners.iter().find(|o| o.manager == manager && o.operation == "Apply") {
        Some(o) => o.fields.clone(),
        None if legacy && live.is_some() => {
            let mut all = FieldSet::of(&object);
            for o in &owners {
                for p in o.fields.paths() {
                    all.remove_overlapping(p);
                }
            }
            all
        }
        None => FieldSet::default(),
    };
    for p in before.paths() {
        let kept = applied.overlaps(p) || owners.iter().any(|o| o.manager != manager && o.fields.overlaps(p));
        if !kept {
            remove(&mut object, p);
        }
    }
    for p in applied.paths() {
        set(&mut object, p, get(config, p).cloned().unwrap_or(Value::Null));
    }
    // Metadata maps left empty are absent, as Kubernetes writes them.
    for key in ["labels", "annotations"] {
        if object["metadata"]
            .get(key)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            remove(&mut object, &["metadata".into(), key.into()]);
        }
    }
    own(&mut owners, manager, "Apply", applied, now);
    Ok((object, entries(owners, &api_version)))
}

/// The managed fields after `manager` updated `old` (none for a create) into `new`: it owns every
/// field it changed, and no one else does.
pub fn update(
    old: Option<&Value>,
    new: &Value,
    managed: &[ManagedFieldsEntry],
    manager: &str,
    now: DateTime<Utc>,
) -> Vec<ManagedFieldsEntry> {
    let api_version = new.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_string();
    let changed = FieldSet::changed(old, new);
    let mut owners = owners(managed);
    if changed.is_empty() {
        return entries(owners, &api_version);
    }
    for o in owners.iter_mut() {
        for p in changed.paths() {
            o.fields.remove_overlapping(p);
        }
    }
    // The updater owns what it set; a field it removed is no one's.
    let mut mine = owners
        .iter()
        .find(|o| o.manager == manager && o.operation == "Update")
        .map(|o| o.fields.clone())
        .unwrap_or_default();
    mine.0.extend(
        changed
            .0
            .into_iter()
            .filter(|p| get(new, p).is_some_and(|v| !v.is_null())),
    );
    own(&mut owners, manager, "Update", mine, now);
    entries(owners, &api_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: Value, labels: Value) -> Value {
        json!({ "apiVersion": "serving.knative.dev/v1", "kind": "Service",
                "metadata": { "name": "a", "namespace": "default", "labels": labels }, "spec": spec })
    }

    /// An apply as revisor's handlers make one, without adopting unowned fields or a settled object.
    fn ssa(
        live: Option<&Value>,
        managed: &[ManagedFieldsEntry],
        config: &Value,
        manager: &str,
        force: bool,
    ) -> Result<(Value, Vec<ManagedFieldsEntry>), Vec<Conflict>> {
        apply(live, managed, config, manager, force, false, None, Utc::now())
    }

    fn owned(entries: &[ManagedFieldsEntry], manager: &str) -> Vec<String> {
        entries
            .iter()
            .filter(|e| e.manager == manager)
            .flat_map(|e| FieldSet::from_fields_v1(e.fields_v1.as_ref().unwrap()).0)
            .map(|p| display(&p))
            .collect()
    }

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let set = FieldSet::of(&svc(
            json!({ "template": { "spec": { "containers": [{ "image": "x" }] } }, "traffic": [] }),
            json!({ "team": "a" }),
        ));
        let paths: Vec<String> = set.paths().map(|p| display(p)).collect();
        assert_eq!(
            paths,
            [
                ".metadata.labels.team",
                ".spec.template.spec.containers",
                ".spec.traffic"
            ]
        );
        assert_eq!(FieldSet::from_fields_v1(&set.to_fields_v1()), set);
        let k8s = json!({ "f:metadata": { "f:labels": { ".": {}, "f:team": {} } } });
        assert_eq!(
            FieldSet::from_fields_v1(&k8s)
                .paths()
                .map(|p| display(p))
                .collect::<Vec<_>>(),
            [".metadata.labels.team"]
        );
    }

    #[test]
    fn applies_merge_conflict_and_remove_what_their_manager_dropped() {
        let tmpl = json!({ "spec": { "containers": [{ "image": "x" }] } });
        // A creates the object with a label; B adds another label: both kept, each owned by its applier.
        let (live, m) = ssa(
            None,
            &[],
            &svc(json!({ "template": tmpl }), json!({ "a": "1" })),
            "A",
            false,
        )
        .unwrap();
        let b = json!({ "apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": { "name": "a", "labels": { "b": "2" } } });
        let (live, m) = ssa(Some(&live), &m, &b, "B", false).unwrap();
        assert_eq!(live["metadata"]["labels"], json!({ "a": "1", "b": "2" }));
        assert_eq!(owned(&m, "B"), [".metadata.labels.b"]);
        // B sets A's label to another value: a conflict naming A and the field, until forced.
        let b2 = json!({ "apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": { "name": "a", "labels": { "a": "9" } } });
        let err = ssa(Some(&live), &m, &b2, "B", false).unwrap_err();
        assert_eq!(
            err,
            [Conflict {
                manager: "A".into(),
                field: ".metadata.labels.a".into()
            }]
        );
        // The same value is no conflict: both own it.
        let same = json!({ "apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": { "name": "a", "labels": { "a": "1" } } });
        let (_, shared) = ssa(Some(&live), &m, &same, "B", false).unwrap();
        assert!(owned(&shared, "A").contains(&".metadata.labels.a".to_string()));
        let (forced, m2) = ssa(Some(&live), &m, &b2, "B", true).unwrap();
        assert_eq!(
            forced["metadata"]["labels"],
            json!({ "a": "9" }),
            "B dropped its label b, and took a"
        );
        assert!(!owned(&m2, "A").contains(&".metadata.labels.a".to_string()));
        // A applies again without its label: it goes, since A owned it alone.
        let (after, _) = ssa(
            Some(&live),
            &m,
            &svc(json!({ "template": tmpl }), json!({})),
            "A",
            false,
        )
        .unwrap();
        assert_eq!(after["metadata"]["labels"], json!({ "b": "2" }));
        let (none, _) = ssa(
            Some(&after),
            &m,
            &svc(json!({ "template": tmpl }), json!({})),
            "B",
            true,
        )
        .unwrap();
        assert!(none["metadata"].get("labels").is_none(), "{none}");
    }

    #[test]
    fn updates_take_the_fields_they_change() {
        let now = Utc::now();
        let old = svc(json!({ "traffic": [{ "percent": 100 }] }), json!({ "a": "1" }));
        let (_, m) = ssa(None, &[], &old, "A", false).unwrap();
        let new = svc(
            json!({ "traffic": [{ "percent": 50 }, { "percent": 50 }] }),
            json!({ "a": "1" }),
        );
        let m = update(Some(&old), &new, &m, "traffic-cmd", now);
        assert_eq!(owned(&m, "traffic-cmd"), [".spec.traffic"]);
        assert_eq!(owned(&m, "A"), [".metadata.labels.a"]);
        // A's next apply of other traffic conflicts with the command.
        let err = ssa(Some(&new), &m, &old, "A", false).unwrap_err();
        assert_eq!(err[0].manager, "traffic-cmd");
        assert_eq!(update(Some(&new), &new, &m, "x", now), m, "no change, no owner");
        // A label removed by an update is no one's: A's next apply of it is no conflict.
        let unlabelled = svc(json!({ "traffic": [{ "percent": 50 }, { "percent": 50 }] }), json!({}));
        let m = update(Some(&new), &unlabelled, &m, "kubectl-label", now);
        assert!(
            owned(&m, "kubectl-label").is_empty() && owned(&m, "A").is_empty(),
            "{m:?}"
        );
        let relabel = json!({ "apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": { "name": "a", "labels": { "a": "1" } } });
        assert!(ssa(Some(&unlabelled), &m, &relabel, "A", false).is_ok());
        // A null claims nothing.
        let nulls = json!({ "apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": { "name": "a", "labels": null } });
        assert!(FieldSet::of(&nulls).is_empty());
    }
}
