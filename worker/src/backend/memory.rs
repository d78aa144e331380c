//! An in-memory backend for unit tests: records what it stores, in order, and fails on demand.

use std::sync::{Arc, Mutex};

use celeriac_protocol::result::State;
use serde_json::Value;

use super::{BackendError, Entry, ResultBackend};

/// One stored entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    pub task_id: String,
    pub state: State,
    pub result: Value,
}

/// Clones share what is stored.
#[derive(Debug, Default, Clone)]
pub(crate) struct Memory {
    stored: Arc<Mutex<Vec<Stored>>>,
    /// Calls still to fail transiently.
    outages: Arc<Mutex<u32>>,
    /// A task id that makes any batch holding it fail permanently.
    poison: Arc<Mutex<Option<String>>>,
    calls: Arc<Mutex<Vec<usize>>>,
}

impl Memory {
    pub fn stored(&self) -> Vec<Stored> {
        self.stored.lock().expect("not poisoned").clone()
    }

    /// The size of each batch `store` was called with, failed calls included.
    pub fn calls(&self) -> Vec<usize> {
        self.calls.lock().expect("not poisoned").clone()
    }

    /// Makes the next `calls` stores fail as if the backend were down.
    pub fn fail_next(&self, calls: u32) {
        *self.outages.lock().expect("not poisoned") += calls;
    }

    pub fn poison(&self, task_id: &str) {
        *self.poison.lock().expect("not poisoned") = Some(task_id.to_owned());
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Injected(&'static str);

impl ResultBackend for Memory {
    type Record = Stored;

    fn prepare(&self, entry: Entry<'_>) -> Stored {
        Stored {
            task_id: entry.msg.headers.id.clone(),
            state: entry.state,
            result: entry.result,
        }
    }

    fn task_id(record: &Stored) -> &str {
        &record.task_id
    }

    async fn store(&self, batch: &[Stored]) -> Result<(), BackendError> {
        self.calls.lock().expect("not poisoned").push(batch.len());
        {
            let mut outages = self.outages.lock().expect("not poisoned");
            if *outages > 0 {
                *outages -= 1;
                return Err(BackendError::transient("memory", Injected("down")));
            }
        }
        let poison = self.poison.lock().expect("not poisoned").clone();
        if poison.is_some_and(|p| batch.iter().any(|r| r.task_id == p)) {
            return Err(BackendError::permanent("memory", Injected("bad record")));
        }
        self.stored
            .lock()
            .expect("not poisoned")
            .extend(batch.iter().cloned());
        Ok(())
    }

    fn describe(&self) -> String {
        "in memory".into()
    }
}
