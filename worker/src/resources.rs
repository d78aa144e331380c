//! What handlers reach besides their arguments: values built once at startup (a database pool,
//! a storage client, a user's own state), looked up by type through the task context.
//!
//! A resource can also be declared *unavailable*, with the reason (`DATABASE_URL is not set`):
//! tasks that require it are named at startup, and a message for one of them fails with that
//! reason instead of running.

use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;

use crate::cpu::CpuPool;
use crate::task_error::{PyError, TaskError};

/// A type's name without its module paths: `Pool<MySql>` for
/// `sqlx_core::pool::Pool<sqlx_mysql::database::MySql>`.
pub(crate) fn short_type_name<T: ?Sized>() -> String {
    let full = type_name::<T>();
    let mut out = String::with_capacity(full.len());
    let mut word = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            out.push_str(word.rsplit("::").next().unwrap_or(&word));
            word.clear();
            out.push(c);
        }
    }
    out.push_str(word.rsplit("::").next().unwrap_or(&word));
    out
}

/// A resource a handler asked for is not there.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{resource} is unavailable: {reason}")]
pub struct ResourceError {
    /// The resource's type name, without module paths.
    pub resource: String,
    /// Why (as declared at startup, or "not configured").
    pub reason: String,
}

impl From<ResourceError> for TaskError {
    /// Stored as Python's `RuntimeError` with the reason, as a failure (no retry).
    fn from(e: ResourceError) -> Self {
        TaskError::Failed(PyError::builtin("RuntimeError", e.to_string()))
    }
}

#[derive(Default)]
struct Map {
    present: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    absent: HashMap<TypeId, (String, String)>,
}

/// The resources of a worker, shared by every task (cheap to clone).
#[derive(Clone, Default)]
pub struct Resources {
    map: Arc<Map>,
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resources")
            .field("present", &self.map.present.len())
            .field(
                "absent",
                &self
                    .map
                    .absent
                    .values()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Resources {
    /// The resource of type `T`.
    pub fn get<T: Any + Send + Sync>(&self) -> Result<&T, ResourceError> {
        let id = TypeId::of::<T>();
        if let Some(value) = self
            .map
            .present
            .get(&id)
            .and_then(|v| v.downcast_ref::<T>())
        {
            return Ok(value);
        }
        Err(ResourceError {
            resource: short_type_name::<T>(),
            reason: self.reason(id).unwrap_or_else(|| "not configured".into()),
        })
    }

    /// Why the resource `id` is missing, if it was declared unavailable.
    pub(crate) fn reason(&self, id: TypeId) -> Option<String> {
        self.map.absent.get(&id).map(|(_, reason)| reason.clone())
    }

    /// Whether a resource of this type is there.
    pub(crate) fn has(&self, id: TypeId) -> bool {
        self.map.present.contains_key(&id)
    }
}

/// Collects resources; frozen into [`Resources`] when the registry is built.
#[derive(Default)]
pub(crate) struct ResourcesBuilder {
    map: Map,
}

impl ResourcesBuilder {
    pub(crate) fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        let id = TypeId::of::<T>();
        self.map.absent.remove(&id);
        self.map.present.insert(id, Arc::new(value));
    }

    pub(crate) fn unavailable<T: Any + Send + Sync>(&mut self, reason: String) {
        let id = TypeId::of::<T>();
        self.map.present.remove(&id);
        self.map.absent.insert(id, (short_type_name::<T>(), reason));
    }

    pub(crate) fn build(mut self) -> Resources {
        // Every worker has a CPU pool; a binary may add its own, sized as it likes.
        if !self.map.present.contains_key(&TypeId::of::<CpuPool>()) {
            self.insert(CpuPool::from_env());
        }
        Resources {
            map: Arc::new(self.map),
        }
    }
}

/// A resource a task needs: its type, and its name for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub(crate) id: TypeId,
    pub(crate) name: String,
}

impl Requirement {
    /// The requirement of a resource of type `T`.
    pub fn of<T: Any + Send + Sync>() -> Self {
        Self {
            id: TypeId::of::<T>(),
            name: short_type_name::<T>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Pool(u32);
    #[derive(Debug)]
    struct Bucket;

    #[test]
    fn resources_are_found_by_type_and_missing_ones_say_why() {
        let mut b = ResourcesBuilder::default();
        b.insert(Pool(4));
        b.unavailable::<Bucket>("AWS_STORAGE_BUCKET_NAME is not set".into());
        let r = b.build();
        assert_eq!(r.get::<Pool>().expect("present"), &Pool(4));
        let err = r.get::<Bucket>().expect_err("absent");
        assert!(err.reason.contains("AWS_STORAGE_BUCKET_NAME"));
        assert!(err.to_string().contains("Bucket is unavailable"));
        assert_eq!(
            r.get::<String>().expect_err("absent").reason,
            "not configured"
        );
        let TaskError::Failed(py) = TaskError::from(err) else {
            panic!("a failure");
        };
        assert_eq!(py.exception.exc_type, "RuntimeError");
    }

    #[test]
    fn type_names_lose_their_paths() {
        assert_eq!(short_type_name::<Pool>(), "Pool");
        assert_eq!(
            short_type_name::<std::collections::HashMap<String, Vec<u8>>>(),
            "HashMap<String, Vec<u8>>"
        );
    }
}
