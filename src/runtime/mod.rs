//! The runtime seam: the only part of berth that touches the kernel. The reconciler drives a
//! `Runtime`; the Linux implementation (namespaces, cgroups, overlayfs) lands with the runtime
//! issue, and `fake::FakeRuntime` implements the same trait in memory for tests.

pub mod fake;
pub mod linux;

use std::future::Future;
use std::time::Duration;

use crate::plan::Observed;
use crate::spec::model::Service;

/// Everything needed to create one container of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub project: String,
    pub service: String,
    /// Replica number, from 1.
    pub index: u32,
    pub name: String,
    pub config_hash: String,
    pub definition: Service,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RuntimeError {
    #[error("no container named {0}")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("{step} failed for {container}: {message}")]
    Step {
        container: String,
        step: &'static str,
        message: String,
    },
}

/// The operations the reconciler needs. Methods return futures so a real runtime can wait on
/// the kernel without blocking the supervisor's event loop.
pub trait Runtime: Send + Sync {
    /// What exists for a project (containers and their states).
    fn observe(&self, project: &str)
    -> impl Future<Output = Result<Observed, RuntimeError>> + Send;
    /// Creates a container (namespaces, rootfs, cgroup) without starting its process.
    fn create(&self, spec: &ContainerSpec)
    -> impl Future<Output = Result<(), RuntimeError>> + Send;
    fn start(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// SIGTERM (or the service's stop signal), then SIGKILL after `grace`.
    fn stop(
        &self,
        name: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes a stopped container and everything berth made for it.
    fn remove(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}
