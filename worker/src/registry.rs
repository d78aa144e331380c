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
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            max_retries: Some(3),
            default_retry_delay: Duration::from_secs(180),
            track_started: false,
            ignore_result: false,
            time_limit: None,
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

/// Collects handlers; [`build`](Self::build) freezes them.
#[derive(Default)]
pub struct RegistryBuilder {
    tasks: Vec<RegisteredTask>,
}

impl std::fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.tasks.iter().map(|t| &t.name))
            .finish()
    }
}

impl RegistryBuilder {
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
        Ok(Registry { tasks })
    }
}

/// The frozen set of tasks a worker runs.
#[derive(Debug, Clone)]
pub struct Registry {
    tasks: HashMap<String, Arc<RegisteredTask>>,
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
}
