//! Human labels by fingerprint: the top of the cascade (a person's class beats every rule and the
//! model, for every failure of the issue the fingerprint names).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

/// A cheap-to-clone handle to the human labels, keyed by fingerprint. Labels come from people
/// (one per issue), so the map grows only as fast as triage does.
#[derive(Debug, Clone, Default)]
pub struct LabelBook {
    inner: Arc<RwLock<HashMap<Box<str>, Arc<str>>>>,
}

impl LabelBook {
    pub fn new() -> Self {
        LabelBook::default()
    }

    /// Records (or replaces) the class a person gave the failures with `fingerprint`.
    pub fn set(&self, fingerprint: &str, class: &str) {
        let mut map = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        map.insert(fingerprint.into(), class.into());
    }

    /// The class a person gave `fingerprint`, if any.
    pub fn get(&self, fingerprint: &str) -> Option<Arc<str>> {
        let map = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        map.get(fingerprint).cloned()
    }

    /// Forgets the label of `fingerprint`; true when there was one.
    pub fn remove(&self, fingerprint: &str) -> bool {
        let mut map = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        map.remove(fingerprint).is_some()
    }

    /// How many fingerprints carry a label.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_replace_and_share() {
        let book = LabelBook::new();
        assert!(book.is_empty());
        assert_eq!(book.get("fp1"), None);
        let other = book.clone();
        book.set("fp1", "tone_brand");
        assert_eq!(other.get("fp1").as_deref(), Some("tone_brand"));
        other.set("fp1", "data_quality");
        assert_eq!(book.get("fp1").as_deref(), Some("data_quality"));
        book.set("fp2", "logic_tool");
        assert_eq!(book.len(), 2);
        assert!(book.remove("fp2"));
        assert!(!book.remove("fp2"));
        assert_eq!(book.len(), 1);
    }
}
