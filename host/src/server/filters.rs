//! The CRI's list filters: id (full or prefix), state, pod, labels.

use std::collections::HashMap;

/// Every selector label is present with the same value.
pub fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// An empty wanted id matches everything; otherwise full id or prefix.
pub fn id_matches(wanted: &str, id: &str) -> bool {
    wanted.is_empty() || id.starts_with(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let labels: HashMap<String, String> = [("a".into(), "1".into()), ("b".into(), "2".into())]
            .into_iter()
            .collect();
        let mut selector = HashMap::new();
        assert!(labels_match(&selector, &labels));
        selector.insert("a".to_string(), "1".to_string());
        assert!(labels_match(&selector, &labels));
        selector.insert("b".to_string(), "3".to_string());
        assert!(!labels_match(&selector, &labels));
        assert!(id_matches("", "abc"));
        assert!(id_matches("ab", "abc"));
        assert!(!id_matches("b", "abc"));
    }
}
