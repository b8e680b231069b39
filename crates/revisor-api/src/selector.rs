//! Kubernetes' label selectors (the whole syntax: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
//! `k`, `!k`) and field selectors (`metadata.name` and `metadata.namespace`, with `=`, `==`, `!=`),
//! parsed once and matched against objects' metadata.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Exists,
    NotExists,
}

/// One requirement: `key` and what its value must (not) be.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// A parsed label selector; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses a selector as `?labelSelector=` gives it; the error says which term is wrong and why.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for term in split_terms(text)? {
            let term = term.trim();
            if term.is_empty() {
                return Err(format!("labelSelector {text:?}: an empty term"));
            }
            out.push(requirement(term).map_err(|e| format!("labelSelector term {term:?}: {e}"))?);
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value `key` must equal, when one term says so (`key=value`): lets a store read one range.
    pub fn required_value(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|r| r.key == key && r.op == Op::In && r.values.len() == 1)
            .map(|r| r.values[0].as_str())
    }

    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.0.iter().all(|r| {
            let value = labels.and_then(|l| l.get(&r.key));
            match r.op {
                Op::In => value.is_some_and(|v| r.values.contains(v)),
                Op::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
            }
        })
    }
}

/// Splits at the commas that are not inside a value list's parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("labelSelector {text:?}: unbalanced parentheses"));
        }
    }
    if depth != 0 {
        return Err(format!("labelSelector {text:?}: unbalanced parentheses"));
    }
    if !text.trim().is_empty() {
        out.push(&text[start..]);
    }
    Ok(out)
}

fn requirement(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement {
            key: label_key(key.trim())?,
            op: Op::NotExists,
            values: vec![],
        });
    }
    for (word, op) in [(" notin ", Op::NotIn), (" in ", Op::In)] {
        if let Some((key, rest)) = term.split_once(word) {
            let list = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("want a list of values in parentheses after{word}"))?;
            let values = list
                .split(',')
                .map(|v| label_value(v.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Requirement {
                key: label_key(key.trim())?,
                op,
                values,
            });
        }
    }
    for (sign, op) in [("!=", Op::NotIn), ("==", Op::In), ("=", Op::In)] {
        if let Some((key, value)) = term.split_once(sign) {
            return Ok(Requirement {
                key: label_key(key.trim())?,
                op,
                values: vec![label_value(value.trim())?],
            });
        }
    }
    Ok(Requirement {
        key: label_key(term)?,
        op: Op::Exists,
        values: vec![],
    })
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of at most 63 characters.
fn label_key(key: &str) -> Result<String, String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty()
            || p.len() > 253
            || !p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
        {
            return Err(format!(
                "{key:?} is not a label key: its prefix must be a DNS subdomain"
            ));
        }
    }
    if name.is_empty() || label_value(name).is_err() {
        return Err(format!(
            "{key:?} is not a label key: the name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(key.to_string())
}

/// A label value: empty, or up to 63 letters, digits, `-`, `_` and `.`, starting and ending with a
/// letter or digit.
fn label_value(v: &str) -> Result<String, String> {
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let edges = v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric());
    if v.len() > 63 || !v.bytes().all(ok_char) || !edges {
        return Err(format!("{v:?} is not a label value"));
    }
    Ok(v.to_string())
}

/// A parsed field selector: terms `field=value`, `field==value`, `field!=value` over the fields a
/// kind can be selected by (`metadata.name` and `metadata.namespace` for revisor's kinds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// The fields revisor's own kinds are selected by.
pub const OBJECT_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

impl FieldSelector {
    /// Parses a selector over [`OBJECT_FIELDS`].
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_over(text, OBJECT_FIELDS)
    }

    /// Parses a selector over `fields`; a term on any other field is an error that names them.
    pub fn parse_over(text: &str, fields: &[&str]) -> Result<Self, String> {
        let mut out = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!(
                    "fieldSelector term {term:?}: want field=value, field==value or field!=value"
                ));
            };
            let field = field.trim();
            if !fields.contains(&field) {
                return Err(format!(
                    "fieldSelector: {field:?} is not a field you can select on: use {}",
                    fields.join(" or ")
                ));
            }
            out.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(Self(out))
    }

    /// Matches an object of revisor's kinds by its namespace and name.
    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        self.matches_by(|field| match field {
            "metadata.name" => name,
            _ => namespace,
        })
    }

    /// Matches by `value`, which gives each selectable field's value.
    pub fn matches_by<'a>(&self, value: impl Fn(&str) -> &'a str) -> bool {
        self.0
            .iter()
            .all(|(field, equal, wanted)| (value(field) == wanted) == *equal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_selectors_take_kubernetes_whole_syntax() {
        let l = labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("serving.knative.dev/service", "hello"),
        ]);
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "missing!=x",
            "app in (web, db)",
            "tier notin (back)",
            "missing notin (x)",
            "app",
            "!missing",
            "app in (web),tier=front,serving.knative.dev/service=hello",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(Some(&l)), "{s}");
        }
        let no = [
            "app=db",
            "app!=web",
            "app in (db)",
            "tier notin (front,back)",
            "missing",
            "!app",
            "app,missing",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(Some(&l)), "{s}");
        }
        assert!(LabelSelector::parse("!app").unwrap().matches(None));
        assert_eq!(
            LabelSelector::parse("a=1,serving.knative.dev/service=hello")
                .unwrap()
                .required_value("serving.knative.dev/service"),
            Some("hello")
        );
        for bad in [
            "app in web",
            "app in (web",
            "=web",
            "app=we b",
            "a,,b",
            "Bad_Prefix/x=1",
            "app=-x",
        ] {
            let err = LabelSelector::parse(bad).unwrap_err();
            assert!(err.contains("labelSelector"), "{bad}: {err}");
        }
    }

    #[test]
    fn field_selectors_select_on_name_and_namespace() {
        let f = FieldSelector::parse("metadata.name=hello,metadata.namespace!=kube-system").unwrap();
        assert!(f.matches("default", "hello"));
        assert!(!f.matches("default", "other") && !f.matches("kube-system", "hello"));
        assert!(FieldSelector::parse("").unwrap().matches("a", "b"));
        assert!(FieldSelector::parse("metadata.name==x").unwrap().matches("n", "x"));
        let err = FieldSelector::parse("spec.template=x").unwrap_err();
        assert!(err.contains("metadata.name or metadata.namespace"), "{err}");
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
