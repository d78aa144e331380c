//! What a handler knows about the message it runs for: Celery's `self.request`.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::cpu::CpuPool;
use crate::resources::{ResourceError, Resources};
use crate::sender::{SendTask, TaskSender};
use crate::task_error::Retry;

/// Where the message came from (`request.delivery_info`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryInfo {
    /// Exchange it was published to (`""` for Celery's direct sends).
    pub exchange: String,
    /// Routing key (the queue name for direct sends).
    pub routing_key: String,
    /// Message priority.
    pub priority: u8,
    /// Whether Kombu restored it after a lost ack.
    pub redelivered: bool,
}

/// The request a handler runs for (Celery's `Task.request`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    /// Task id.
    pub id: String,
    /// Task name.
    pub task: String,
    /// How many times this task was retried before this run.
    pub retries: u32,
    /// First task of the workflow.
    pub root_id: Option<String>,
    /// Task that sent this one.
    pub parent_id: Option<String>,
    /// Group id.
    pub group: Option<String>,
    /// Position within the group.
    pub group_index: Option<i64>,
    /// This worker's node name (`--hostname`).
    pub hostname: String,
    /// Where the message came from.
    pub delivery_info: DeliveryInfo,
    /// ETA as sent.
    pub eta: Option<String>,
    /// Expiry as sent.
    pub expires: Option<String>,
    /// `gen<pid>@<host>` of the sender.
    pub origin: Option<String>,
    /// The client's oid.
    pub reply_to: Option<String>,
    /// Positional arguments as sent.
    pub args: Vec<Value>,
    /// Keyword arguments as sent.
    pub kwargs: Map<String, Value>,
    /// Custom headers sent with the task.
    pub headers: Map<String, Value>,
}

/// Handed to every handler call.
#[derive(Debug, Clone)]
pub struct TaskContext {
    request: Arc<Request>,
    resources: Resources,
    sender: Arc<TaskSender>,
}

impl TaskContext {
    pub(crate) fn new(
        request: Arc<Request>,
        resources: Resources,
        sender: Arc<TaskSender>,
    ) -> Self {
        Self {
            request,
            resources,
            sender,
        }
    }

    /// Starts sending a Celery task, with this task as its parent (as `send_task` or `.delay()`
    /// inside a Python task): `ctx.send_task("tasks.add").args(vec![2.into(), 3.into()])
    /// .queue("default").send().await?` returns the new task's id.
    pub fn send_task(&self, task: &str) -> SendTask {
        let root = self
            .request
            .root_id
            .clone()
            .unwrap_or_else(|| self.request.id.clone());
        SendTask::new(
            self.sender.clone(),
            task,
            Some((self.request.id.clone(), root)),
        )
    }

    /// The worker's resource of type `T` (added with
    /// [`RegistryBuilder::resource`](crate::RegistryBuilder::resource)). `?` turns a missing one
    /// into a failure that names it: `let pool = ctx.resource::<MySqlPool>()?;`.
    pub fn resource<T: std::any::Any + Send + Sync>(&self) -> Result<&T, ResourceError> {
        self.resources.get::<T>()
    }

    /// The worker's pool for CPU-heavy work: `ctx.cpu().run(move || decode(&bytes)).await`.
    pub fn cpu(&self) -> &CpuPool {
        // `ResourcesBuilder::build` always adds one.
        static FALLBACK: std::sync::OnceLock<CpuPool> = std::sync::OnceLock::new();
        self.resources
            .get::<CpuPool>()
            .unwrap_or_else(|_| FALLBACK.get_or_init(CpuPool::from_env))
    }

    /// The request.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.request.id
    }

    /// How many times this task was retried before this run.
    pub fn retries(&self) -> u32 {
        self.request.retries
    }

    /// Starts a retry request: `return Err(ctx.retry().countdown(d).into())`.
    pub fn retry(&self) -> Retry {
        Retry::default()
    }
}
