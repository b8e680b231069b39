//! Kubernetes name rules (DNS-1035 and DNS-1123 labels, qualified names) and Knative's naming.

/// Why a name is not a DNS-1035 label, or `None` when it is one.
pub fn dns1035_label_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 63 {
        return Some(format!("must be no more than 63 characters, got {}", name.len()));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let first = name.as_bytes()[0];
    let last = name.as_bytes()[name.len() - 1];
    if !ok_chars || !first.is_ascii_lowercase() || last == b'-' {
        return Some(format!(
            "{name:?} is not a DNS-1035 label: use lower-case letters, digits and '-', \
             start with a letter and end with a letter or digit"
        ));
    }
    None
}

/// Why a name is not a DNS-1123 label, or `None` when it is one.
pub fn dns1123_label_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 63 {
        return Some(format!("must be no more than 63 characters, got {}", name.len()));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let first = name.as_bytes()[0];
    let last = name.as_bytes()[name.len() - 1];
    if !ok_chars || first == b'-' || last == b'-' {
        return Some(format!(
            "{name:?} is not a DNS-1123 label: use lower-case letters, digits and '-', \
             and start and end with a letter or digit"
        ));
    }
    None
}

fn dns1123_subdomain_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(|part| dns1123_label_error(part).is_none())
}

fn qualified_name_part_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Why a label or annotation key is not a Kubernetes qualified name (`[prefix/]name`).
pub fn qualified_name_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !dns1123_subdomain_ok(p) {
            return Some(format!("{key:?}: the prefix {p:?} must be a DNS-1123 subdomain"));
        }
    }
    if !qualified_name_part_ok(name) {
        return Some(format!(
            "{key:?} is not a qualified name: at most 63 characters of letters, digits, '-', '_' \
             or '.', starting and ending with a letter or digit, with an optional DNS prefix and '/'"
        ));
    }
    None
}

/// Why a label value is not valid, or `None`.
pub fn label_value_error(value: &str) -> Option<String> {
    if value.is_empty() || qualified_name_part_ok(value) {
        None
    } else {
        Some(format!(
            "{value:?} is not a valid label value: at most 63 characters of letters, digits, '-', '_' \
             or '.', starting and ending with a letter or digit"
        ))
    }
}

/// The name Knative gives the revision made from configuration generation `generation`.
pub fn revision_name(service: &str, generation: i64) -> String {
    format!("{service}-{generation:05}")
}

/// The longest service name whose generated revision names stay valid DNS labels.
pub const MAX_SERVICE_NAME: usize = 63 - "-00001".len();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1035_labels() {
        assert!(dns1035_label_error("hello").is_none());
        assert!(dns1035_label_error("a-1").is_none());
        for bad in ["", "1abc", "Abc", "a_b", "abc-", &"a".repeat(64)] {
            assert!(dns1035_label_error(bad).is_some(), "{bad} should be refused");
        }
    }

    #[test]
    fn dns1123_allows_leading_digit() {
        assert!(dns1123_label_error("1abc").is_none());
        assert!(dns1123_label_error("-abc").is_some());
    }

    #[test]
    fn qualified_names() {
        assert!(qualified_name_error("autoscaling.knative.dev/min-scale").is_none());
        assert!(qualified_name_error("app").is_none());
        assert!(qualified_name_error("Bad_Prefix!/x").is_some());
        assert!(qualified_name_error("a/").is_some());
    }

    #[test]
    fn revision_names_are_padded() {
        assert_eq!(revision_name("ai-model-service", 1), "ai-model-service-00001");
        assert_eq!(revision_name("s", 123456), "s-123456");
    }
}
