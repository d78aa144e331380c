//! The registry of named task handlers, built once and frozen before the worker runs.
//!
//! A handler is any `async fn(TaskContext, A) -> Result<R, TaskError>` where `A` is bound from
//! the message's args/kwargs (see [`crate::args`]) and `R` is serialized as the result. Types are
//! erased once, at registration.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::args;
use crate::context::TaskContext;
use crate::resources::{Requirement, ResourceError, Resources, ResourcesBuilder};
use crate::task_error::{PyError, TaskError};

/// Per-task settings, with Celery's defaults.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TaskOptions {
    /// Retries allowed before a retry request becomes a failure (`None`: unlimited). Celery: 3.
    pub max_retries: Option<u32>,
    /// Delay of a retry that gives neither countdown nor eta. Celery: 180 s.
    pub default_retry_delay: Duration,
    /// Store STARTED before running (also on for every task with `--task-track-started`).
    pub track_started: bool,
    /// Never store a result for this task.
    pub ignore_result: bool,
    /// Hard time limit when the message sets none.
    pub time_limit: Option<Duration>,
    /// Resources the task cannot run without (see [`TaskOptions::requires`]).
    pub requires: Vec<Requirement>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            max_retries: Some(3),
            default_retry_delay: Duration::from_secs(180),
            track_started: false,
            ignore_result: false,
            time_limit: None,
            requires: Vec::new(),
        }
    }
}

impl TaskOptions {
    /// Sets `max_retries`.
    pub fn max_retries(mut self, max: Option<u32>) -> Self {
        self.max_retries = max;
        self
    }

    /// Sets `default_retry_delay`.
    pub fn default_retry_delay(mut self, delay: Duration) -> Self {
        self.default_retry_delay = delay;
        self
    }

    /// Sets `track_started`.
    pub fn track_started(mut self, on: bool) -> Self {
        self.track_started = on;
        self
    }

    /// Sets `ignore_result`.
    pub fn ignore_result(mut self, on: bool) -> Self {
        self.ignore_result = on;
        self
    }

    /// Sets the hard time limit.
    pub fn time_limit(mut self, limit: Option<Duration>) -> Self {
        self.time_limit = limit;
        self
    }

    /// Declares that the task needs the resource of type `T`: when the worker has none, the task
    /// is named at startup and its messages fail with the reason instead of running.
    pub fn requires<T: std::any::Any + Send + Sync>(mut self) -> Self {
        self.requires.push(Requirement::of::<T>());
        self
    }
}

/// The boxed future a handler call returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send>>;

trait ErasedHandler: Send + Sync {
    fn call(
        &self,
        ctx: TaskContext,
        task: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> HandlerFuture;
}

struct FnHandler<F, A, R> {
    f: F,
    _types: PhantomData<fn(A) -> R>,
}

impl<F, Fut, A, R> ErasedHandler for FnHandler<F, A, R>
where
    F: Fn(TaskContext, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    A: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
{
    fn call(
        &self,
        ctx: TaskContext,
        task: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> HandlerFuture {
        match args::bind::<A>(task, args, kwargs) {
            Err(e) => Box::pin(std::future::ready(Err(TaskError::Failed(e)))),
            Ok(bound) => {
                let fut = (self.f)(ctx, bound);
                Box::pin(async move {
                    let value = fut.await?;
                    serde_json::to_value(value).map_err(|e| {
                        TaskError::Failed(PyError::new(
                            "kombu.exceptions",
                            "EncodeError",
                            e.to_string(),
                        ))
                    })
                })
            }
        }
    }
}

/// One registered task.
pub struct RegisteredTask {
    name: String,
    options: TaskOptions,
    handler: Box<dyn ErasedHandler>,
}

impl std::fmt::Debug for RegisteredTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredTask")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish()
    }
}

impl RegisteredTask {
    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The task's options.
    pub fn options(&self) -> &TaskOptions {
        &self.options
    }

    /// Binds the arguments and starts the handler.
    pub fn call(
        &self,
        ctx: TaskContext,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> HandlerFuture {
        self.handler.call(ctx, &self.name, args, kwargs)
    }
}

/// Registry construction failed.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// Two handlers were registered under one name.
    #[error("task `{0}` is registered twice")]
    Duplicate(String),
    /// A task name is empty.
    #[error("a task name cannot be empty")]
    EmptyName,
}

/// Collects handlers and resources; [`build`](Self::build) freezes them.
#[derive(Default)]
pub struct RegistryBuilder {
    tasks: Vec<RegisteredTask>,
    resources: ResourcesBuilder,
}

impl std::fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.tasks.iter().map(|t| &t.name))
            .finish()
    }
}

impl RegistryBuilder {
    /// Adds a resource (a pool, a client, your own state), built once, reached by handlers with
    /// [`TaskContext::resource`]. One value per type; a later one replaces an earlier one.
    pub fn resource<T: std::any::Any + Send + Sync>(mut self, value: T) -> Self {
        self.resources.insert(value);
        self
    }

    /// Declares that the resource of type `T` is missing, and why (`"DATABASE_URL is not
    /// set"`): tasks that require it are reported at startup and fail with this reason.
    pub fn unavailable<T: std::any::Any + Send + Sync>(
        mut self,
        reason: impl Into<String>,
    ) -> Self {
        self.resources.unavailable::<T>(reason.into());
        self
    }

    /// Registers `handler` under `name` with default options.
    pub fn task<F, Fut, A, R>(self, name: &str, handler: F) -> Self
    where
        F: Fn(TaskContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
    {
        self.task_with(name, TaskOptions::default(), handler)
    }

    /// Registers `handler` under `name` with `options`.
    pub fn task_with<F, Fut, A, R>(mut self, name: &str, options: TaskOptions, handler: F) -> Self
    where
        F: Fn(TaskContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
    {
        self.tasks.push(RegisteredTask {
            name: name.to_owned(),
            options,
            handler: Box::new(FnHandler {
                f: handler,
                _types: PhantomData,
            }),
        });
        self
    }

    /// Freezes the registry; a duplicate or empty name is an error.
    pub fn build(self) -> Result<Registry, RegistryError> {
        let mut tasks = HashMap::with_capacity(self.tasks.len());
        for t in self.tasks {
            if t.name.is_empty() {
                return Err(RegistryError::EmptyName);
            }
            if tasks.contains_key(&t.name) {
                return Err(RegistryError::Duplicate(t.name));
            }
            tasks.insert(t.name.clone(), Arc::new(t));
        }
        Ok(Registry {
            tasks,
            resources: self.resources.build(),
        })
    }
}

/// The frozen set of tasks a worker runs, with the resources they reach.
#[derive(Debug, Clone)]
pub struct Registry {
    tasks: HashMap<String, Arc<RegisteredTask>>,
    resources: Resources,
}

impl Registry {
    /// Starts a registry.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// The task registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<RegisteredTask>> {
        self.tasks.get(name)
    }

    /// The resources handed to every task.
    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// Why `task` cannot run on this worker (a resource it requires is missing), if so.
    pub fn unavailable_reason(&self, task: &RegisteredTask) -> Option<ResourceError> {
        task.options
            .requires
            .iter()
            .find(|r| !self.resources.has(r.id))
            .map(|r| ResourceError {
                resource: r.name.clone(),
                reason: self
                    .resources
                    .reason(r.id)
                    .unwrap_or_else(|| "not configured".into()),
            })
    }

    /// The tasks that cannot run on this worker, with the reason, sorted by name.
    pub fn unavailable(&self) -> Vec<(&str, ResourceError)> {
        let mut out: Vec<_> = self
            .tasks
            .values()
            .filter_map(|t| self.unavailable_reason(t).map(|e| (t.name(), e)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tasks.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn noop(_ctx: TaskContext, _args: ()) -> Result<(), TaskError> {
        Ok(())
    }

    #[test]
    fn duplicates_are_a_startup_error() {
        let err = Registry::builder()
            .task("a", noop)
            .task("a", noop)
            .build()
            .unwrap_err();
        assert_eq!(err, RegistryError::Duplicate("a".into()));
        assert_eq!(
            Registry::builder().task("", noop).build().unwrap_err(),
            RegistryError::EmptyName
        );
        let reg = Registry::builder()
            .task("b", noop)
            .task("a", noop)
            .build()
            .unwrap();
        assert_eq!(reg.names(), ["a", "b"]);
    }

    struct Database;

    #[test]
    fn tasks_that_need_a_missing_resource_are_named_with_the_reason() {
        let reg = Registry::builder()
            .unavailable::<Database>("DATABASE_URL is not set")
            .resource(7u32)
            .task_with(
                "needs-db",
                TaskOptions::default().requires::<Database>(),
                noop,
            )
            .task_with("needs-u32", TaskOptions::default().requires::<u32>(), noop)
            .task_with(
                "needs-string",
                TaskOptions::default().requires::<String>(),
                noop,
            )
            .task("free", noop)
            .build()
            .unwrap();
        let unavailable: Vec<(&str, String)> = reg
            .unavailable()
            .into_iter()
            .map(|(t, e)| (t, e.reason))
            .collect();
        assert_eq!(
            unavailable,
            [
                ("needs-db", "DATABASE_URL is not set".to_owned()),
                ("needs-string", "not configured".to_owned())
            ]
        );
        assert_eq!(reg.resources().get::<u32>(), Ok(&7));
    }
}
