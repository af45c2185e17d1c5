//! The runtime seam: the only part of berth that touches the kernel. The reconciler drives a
//! `Runtime`; the Linux implementation (namespaces, cgroups, overlayfs) lands with the runtime
//! issue, and `fake::FakeRuntime` implements the same trait in memory for tests.

pub mod fake;
pub mod inspect;
pub mod linux;
pub mod lower;

use std::future::Future;
use std::time::Duration;

pub use inspect::{ExecOptions, Info, Inspect, LOG_FILE, Started, Stats, Usage};

use crate::plan::{Observed, State};
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
    /// A one-off container (`berth run`), outside the project's desired state.
    pub oneoff: bool,
    /// The project networks it joins (empty: no network of the project, see network_mode).
    pub networks: Vec<crate::net::Attachment>,
    /// Its volumes, bind mounts and tmpfs.
    pub mounts: Vec<crate::disk::MountSpec>,
    /// Its secrets and configs, with their contents.
    pub granted: Vec<crate::disk::secrets::Granted>,
}

/// The error a runtime step failed with, kept whole (its source chain, and its type for a
/// caller that looks closer: `cli/exec` reads the errno of a command that could not run).
/// Shared, so a `RuntimeError` stays cheap to clone; compared by what it says.
#[derive(Debug, Clone)]
pub struct Cause(pub std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Cause {
        Cause(std::sync::Arc::from(e.into()))
    }

    /// The error as the type `E`, when it is one.
    /// When a process could not be started inside a container (the setup process failed at
    /// one of its steps): what it says, and the errno of the failed call (0 when none).
    pub fn setup_failure(&self) -> Option<(String, i32)> {
        use linux::launch::LaunchError;
        match self.downcast_ref::<LaunchError>() {
            Some(LaunchError::Setup { source, .. }) => Some((source.to_string(), source.errno)),
            _ => None,
        }
    }

    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref::<E>()
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RuntimeError {
    #[error("no container named {0}")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    /// The kernel lacks what berth needs (the sentence names what and which version has it).
    #[error("{0}")]
    Kernel(String),
    #[error("{step} failed for {container}: {cause}")]
    Step {
        container: String,
        step: &'static str,
        #[source]
        cause: Cause,
    },
}

/// A container's health check, with Docker's defaults filled in and the test as an argv
/// (`CMD-SHELL x` is `/bin/sh -c x`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthSpec {
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
    pub start_interval: Duration,
}

impl HealthSpec {
    /// The effective check: the file's fields over the image's (each field on its own, as
    /// Docker merges them), `None` when there is no test, the test is `NONE`, or it is disabled.
    pub fn resolve(
        file: Option<&crate::spec::model::Healthcheck>,
        image: Option<&crate::image::Healthcheck>,
    ) -> Option<HealthSpec> {
        if file.is_some_and(|f| f.disable) {
            return None;
        }
        let test = file
            .map(|f| f.test.clone())
            .filter(|t| !t.is_empty())
            .or_else(|| image.map(|i| i.test.clone()))
            .unwrap_or_default();
        let argv = match test.first().map(String::as_str) {
            Some("CMD") => test[1..].to_vec(),
            Some("CMD-SHELL") => {
                let mut v = vec!["/bin/sh".to_string(), "-c".to_string()];
                v.push(test[1..].join(" "));
                v
            }
            _ => return None,
        };
        if argv.is_empty() {
            return None;
        }
        let pick = |f: Option<crate::spec::units::Duration>, i: Option<Duration>, d: u64| {
            f.map(|f| f.as_std())
                .filter(|d| !d.is_zero())
                .or(i)
                .unwrap_or(Duration::from_secs(d))
        };
        Some(HealthSpec {
            argv,
            interval: pick(
                file.and_then(|f| f.interval),
                image.and_then(|i| i.interval),
                30,
            ),
            timeout: pick(
                file.and_then(|f| f.timeout),
                image.and_then(|i| i.timeout),
                30,
            ),
            retries: file
                .and_then(|f| f.retries)
                .or(image.and_then(|i| i.retries))
                .unwrap_or(3),
            start_period: pick(
                file.and_then(|f| f.start_period),
                image.and_then(|i| i.start_period),
                0,
            ),
            start_interval: pick(
                file.and_then(|f| f.start_interval),
                image.and_then(|i| i.start_interval),
                5,
            ),
        })
    }
}

/// Ends the helper processes this process keeps for the runtime (the setup zygote) and reaps
/// them: before it executes another program (an idle supervisor), which would leave them
/// zombies that nobody reaps.
pub fn before_exec() {
    linux::launch::stop_zygote();
}

/// Both halves of the seam: what a caller that makes containers and then looks into them
/// (the CLI, the builder) holds.
pub trait Engine: Runtime + Inspect + 'static {}

impl<T: Runtime + Inspect + 'static> Engine for T {}

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
    /// Resolves when the container's process has ended (at once if it is not running), with
    /// the state it ended in.
    fn wait(&self, name: &str) -> impl Future<Output = Result<State, RuntimeError>> + Send;
    /// The container's effective health check (file over image), if it has one.
    fn healthcheck(&self, name: &str) -> Result<Option<HealthSpec>, RuntimeError>;
    /// Runs one health probe inside the running container: its exit status (a probe that
    /// outlives `timeout` is killed and counts as a failure) and the start of its output.
    fn probe(
        &self,
        name: &str,
        argv: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<(i32, String), RuntimeError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::Cause;
    use super::linux::error::SetupError;
    use super::linux::launch::LaunchError;

    #[test]
    fn a_command_that_could_not_run_keeps_its_errno_to_the_cli() {
        let failed = |errno| {
            Cause::new(LaunchError::Setup {
                name: "c".into(),
                source: SetupError::sys("execute", Some("/bin/x"), errno),
            })
        };
        let (what, errno) = failed(nix::errno::Errno::ENOENT).setup_failure().unwrap();
        assert_eq!(errno, libc::ENOENT);
        assert!(what.starts_with("execute /bin/x: "), "{what}");
        assert_eq!(
            failed(nix::errno::Errno::EACCES).setup_failure().unwrap().1,
            libc::EACCES
        );
        // A message that merely mentions ENOENT is not a failed setup.
        assert_eq!(Cause::new("ENOENT somewhere").setup_failure(), None);
    }
}
