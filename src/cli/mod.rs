//! The command line: global options like `docker compose`, one file per verb. Parses arguments,
//! calls into the library, prints. `anyhow` lives here and nowhere below.

mod boot;
mod build;
mod config;
mod cp;
mod ctx;
mod disk;
mod down;
mod events;
mod exec;
mod image;
mod lifecycle;
mod logs;
mod portable;
mod project;
mod ps;
mod pullview;
mod run;
mod stats;
mod up;
mod version;
mod warn;
mod watch;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::spec::{LoadError, LoadOptions};

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    about = "Run multi-container projects from a compose file, with berth's own container runtime",
    disable_version_flag = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub verb: Verb,
}

/// The options every verb shares (they go before the verb, as with `docker compose`).
#[derive(Debug, Args, Clone, Default)]
pub struct Global {
    /// Project file(s); later files merge over earlier ones [default: berth.yaml, compose.yaml, ...]
    // Not `global`: after the verb, `-f` is the verb's own (`logs -f` follows), as in Compose.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Project name [default: the `name:` in the file, or the directory's name]
    #[arg(short = 'p', long = "project-name", global = true, value_name = "NAME")]
    pub project_name: Option<String>,
    /// Directory relative paths start from [default: the first file's directory]
    #[arg(long, global = true, value_name = "DIR")]
    pub project_directory: Option<PathBuf>,
    /// Variables for interpolation, instead of the project directory's `.env`
    #[arg(long = "env-file", global = true, value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// Enable services of this profile (also COMPOSE_PROFILES; `*` enables all)
    #[arg(long = "profile", global = true, value_name = "NAME")]
    pub profiles: Vec<String>,
}

impl Global {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            files: self.files.clone(),
            project_name: self.project_name.clone(),
            project_directory: self.project_directory.clone(),
            env_files: self.env_files.clone(),
            profiles: self.profiles.clone(),
            ..LoadOptions::from_process()
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Print the resolved, normalized project (like `docker compose config`)
    Config(config::ConfigArgs),
    /// Show berth's version
    Version(version::VersionArgs),
    /// Create and start the project's containers
    Up(up::UpArgs),
    /// Stop and remove what `up` created
    Down(down::DownArgs),
    /// List the project's containers
    Ps(ps::PsArgs),
    /// Show container output
    Logs(logs::LogsArgs),
    /// The project's supervisor (started by `up -d`)
    #[command(name = "__supervise", hide = true)]
    Supervise(up::SuperviseArgs),
    /// Run a command in a running container
    Exec(exec::ExecArgs),
    /// Run a one-off command in a new container of a service
    Run(run::RunArgs),
    /// Create containers without starting them
    Create(up::CreateArgs),
    /// Start existing containers
    Start(lifecycle::ServicesArgs),
    /// Stop running containers
    Stop(lifecycle::StopArgs),
    /// Restart containers
    Restart(lifecycle::StopArgs),
    /// Send a signal to containers
    Kill(lifecycle::KillArgs),
    /// Remove stopped containers
    Rm(lifecycle::RmArgs),
    /// Pause containers (cgroup freezer)
    Pause(lifecycle::NamesArgs),
    /// Resume paused containers
    Unpause(lifecycle::NamesArgs),
    /// Show the processes of containers
    Top(lifecycle::NamesArgs),
    /// Show the host port of a published port
    Port(ps::PortArgs),
    /// Live resource use of containers
    Stats(stats::StatsArgs),
    /// Wait for containers to stop; prints their exit codes
    Wait(lifecycle::NamesArgs),
    /// Set the number of replicas of services (SERVICE=N)
    Scale(lifecycle::ScaleArgs),
    /// Stream container events
    Events(events::EventsArgs),
    /// Copy files between a container and the host
    Cp(cp::CpArgs),
    /// List running projects
    Ls(boot::LsArgs),
    /// Pull service images
    Pull(image::PullArgs),
    /// Build service images
    Build(build::BuildArgs),
    /// Rebuild and sync on file changes (develop.watch)
    Watch(watch::WatchArgs),
    /// List images
    Images(image::LsArgs),
    /// Image management (import, ls, rm, inspect, prune, save)
    Image(image::ImageArgs),
    /// Remove images
    Rmi { images: Vec<String> },
    /// Save images to a tarball (docker-save and OCI layout in one)
    Save(image::SaveArgs),
    /// Log in to a registry
    Login(image::LoginArgs),
    /// Log out of a registry
    Logout(image::LogoutArgs),
    /// Private and shared disks (ls, rm, update...)
    Disk(disk::DiskArgs),
    /// Bring the project up at boot (systemd unit)
    Enable(boot::EnableArgs),
    /// Remove the boot-time unit
    Disable(boot::DisableArgs),
    /// Write the project, its images, volumes and private disks to one archive
    Export(portable::ExportArgs),
    /// Restore a project from an archive made by `berth export`
    Import(portable::ImportArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Runs the command line; returns the process exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    warn::install();
    if !matches!(cli.verb, Verb::Supervise(_)) {
        // `berth ps | head` should end quietly, as any Unix tool does, instead of panicking on
        // a write to a closed pipe (Rust ignores SIGPIPE by default). The supervisor keeps it
        // ignored: a closed log reader must not kill it.
        // SAFETY: restoring a default signal disposition; no handler runs.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match &cli.verb {
        Verb::Config(a) => config::run(&cli.global, a),
        Verb::Version(a) => version::run(a),
        Verb::Images(a) => image::list(a),
        Verb::Image(a) => image::run(a),
        Verb::Rmi { images } => image::remove(images),
        Verb::Up(a) => up::run(&cli.global, a),
        Verb::Create(a) => up::run(&cli.global, &up::UpArgs::from(a)),
        Verb::Cp(a) => cp::run(&cli.global, a),
        Verb::Down(a) => down::run(&cli.global, a),
        Verb::Ps(a) => ps::run(&cli.global, a),
        Verb::Disk(a) => disk::run(&cli.global, a),
        Verb::Pull(a) => image::pull(&cli.global, a),
        Verb::Save(a) => image::save(a),
        Verb::Build(a) => build::run(&cli.global, a),
        Verb::Watch(a) => watch::run(&cli.global, a),
        Verb::Login(a) => image::login(a),
        Verb::Logout(a) => image::logout(a.server.as_deref()),
        Verb::Port(a) => ps::port(&cli.global, a),
        Verb::Logs(a) => logs::run(&cli.global, a),
        Verb::Supervise(a) => up::supervise(&cli.global, a),
        Verb::Start(a) => lifecycle::start(&cli.global, a),
        Verb::Stop(a) => lifecycle::stop(&cli.global, a),
        Verb::Restart(a) => lifecycle::restart(&cli.global, a),
        Verb::Kill(a) => lifecycle::kill(&cli.global, a),
        Verb::Rm(a) => lifecycle::rm(&cli.global, a),
        Verb::Pause(a) => lifecycle::pause(&cli.global, a, true),
        Verb::Unpause(a) => lifecycle::pause(&cli.global, a, false),
        Verb::Top(a) => lifecycle::top(&cli.global, a),
        Verb::Wait(a) => lifecycle::wait(&cli.global, a),
        Verb::Scale(a) => lifecycle::scale(&cli.global, a),
        Verb::Run(a) => run::run(&cli.global, a),
        Verb::Exec(a) => exec::run(&cli.global, a),
        Verb::Ls(a) => boot::ls(a),
        Verb::Stats(a) => stats::run(&cli.global, a),
        Verb::Events(a) => events::run(&cli.global, a),
        Verb::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "berth", &mut std::io::stdout());
            Ok(0)
        }
        Verb::Enable(a) => boot::enable(&cli.global, a),
        Verb::Disable(a) => boot::disable(&cli.global, a),
        Verb::Export(a) => portable::export(&cli.global, a),
        Verb::Import(a) => portable::import(&cli.global, a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            1
        }
    }
}

fn report(e: &anyhow::Error) {
    match e.downcast_ref::<LoadError>() {
        Some(LoadError::Invalid(d)) => {
            for line in &d.0 {
                eprintln!("{line}");
            }
            let n = d.len();
            eprintln!(
                "berth: {n} error{} in the project file; nothing was changed",
                if n == 1 { "" } else { "s" }
            );
        }
        _ => {
            // The chain of contexts and causes, without repeating a cause that an error's own
            // message already quotes.
            let mut msg = String::new();
            for cause in e.chain() {
                let text = cause.to_string();
                if msg.contains(&text) {
                    continue;
                }
                if !msg.is_empty() {
                    msg.push_str(": ");
                }
                msg.push_str(&text);
            }
            eprintln!("berth: {msg}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
