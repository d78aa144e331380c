//! Messages this worker holds (fetched, not yet acked or handed back), by delivery tag: what the
//! refresher keeps fresh in `unacked_index` and what shutdown hands back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// One held message.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    /// The list element as fetched.
    pub raw: Arc<str>,
    /// The queue it came from.
    pub queue: Arc<str>,
}

#[derive(Debug, Default)]
pub(crate) struct InFlight {
    held: Mutex<HashMap<String, Held>>,
}

impl InFlight {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Held>) -> T) -> T {
        f(&mut self.held.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn insert(&self, tag: String, held: Held) {
        self.with(|m| m.insert(tag, held));
    }

    pub fn remove(&self, tag: &str) -> Option<Held> {
        self.with(|m| m.remove(tag))
    }

    pub fn remove_many<S: AsRef<str>>(&self, tags: &[S]) {
        self.with(|m| {
            for t in tags {
                m.remove(t.as_ref());
            }
        });
    }

    pub fn contains(&self, tag: &str) -> bool {
        self.with(|m| m.contains_key(tag))
    }

    pub fn tags(&self) -> Vec<String> {
        self.with(|m| m.keys().cloned().collect())
    }

    pub fn len(&self) -> usize {
        self.with(|m| m.len())
    }

    pub fn drain(&self) -> Vec<(String, Held)> {
        self.with(|m| m.drain().collect())
    }
}
