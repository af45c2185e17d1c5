//! How a pull shows itself, for `berth pull` and the implicit pull of `berth up`: on a
//! terminal one indicatif bar per layer (bytes, rate) and a total; otherwise one plain line
//! per blob, as `docker pull` prints them.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::project::Progress;
use crate::image::registry::PullEvent;

/// Where the lines go: `berth pull` writes to stdout as `docker pull` does, `up` to stderr
/// (its stdout may be a log stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

pub struct PullView {
    stream: Stream,
    quiet: bool,
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    layers: Mutex<HashMap<String, ProgressBar>>,
}

/// The first 12 hex digits of a digest, as Docker shows a layer.
pub fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl PullView {
    pub fn new(mode: Progress, stream: Stream) -> PullView {
        let is_tty = match stream {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        };
        let bars = match mode {
            Progress::Tty => true,
            Progress::Auto => is_tty,
            Progress::Plain | Progress::Quiet => false,
        };
        let bars = bars.then(|| {
            // `term_like` draws even when the stream is not a terminal: `--progress tty` is
            // obeyed (indicatif's plain stdout/stderr targets hide themselves there).
            let term = match stream {
                Stream::Stdout => console::Term::stdout(),
                Stream::Stderr => console::Term::stderr(),
            };
            let multi =
                MultiProgress::with_draw_target(ProgressDrawTarget::term_like(Box::new(term)));
            let total = multi.add(ProgressBar::new(0));
            total.set_style(style(
                " {prefix:<14} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
            ));
            total.set_prefix("total");
            total.enable_steady_tick(Duration::from_millis(200));
            Bars {
                multi,
                total,
                layers: Mutex::new(HashMap::new()),
            }
        });
        PullView {
            stream,
            quiet: mode == Progress::Quiet,
            bars,
        }
    }

    fn line(&self, s: &str) {
        if self.quiet {
            return;
        }
        if let Some(b) = &self.bars {
            // Above the bars, which stay at the bottom.
            let _ = b.multi.println(s);
            return;
        }
        match self.stream {
            Stream::Stdout => println!("{s}"),
            Stream::Stderr => eprintln!("{s}"),
        }
    }

    /// A heading line (`Pulling 127.0.0.1:5000/app:1`).
    pub fn say(&self, s: &str) {
        self.line(s);
    }

    pub fn event(&self, e: PullEvent<'_>) {
        if self.quiet {
            return;
        }
        let Some(b) = &self.bars else {
            match e {
                PullEvent::Have { digest, .. } => {
                    self.line(&format!(" {} Already exists", short(digest)))
                }
                PullEvent::Done { digest, bytes } => self.line(&format!(
                    " {} Pull complete ({})",
                    short(digest),
                    super::ctx::human(bytes)
                )),
                PullEvent::Start { .. } | PullEvent::Bytes { .. } | PullEvent::Unpacking => {}
            }
            return;
        };
        let mut layers = b.layers.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            PullEvent::Have { digest, .. } => {
                let bar = b.multi.insert_before(&b.total, ProgressBar::new(1));
                bar.set_style(style(" {prefix:<14} {msg}"));
                bar.set_prefix(short(digest));
                bar.finish_with_message("Already exists");
            }
            PullEvent::Start { digest, size } => {
                let bar = b.multi.insert_before(&b.total, ProgressBar::new(size));
                bar.set_style(style(
                    " {prefix:<14} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}",
                ));
                bar.set_prefix(short(digest));
                b.total.inc_length(size);
                layers.insert(digest.to_string(), bar);
            }
            PullEvent::Bytes { digest, done } => {
                if let Some(bar) = layers.get(digest) {
                    let before = bar.position();
                    // A resumed transfer restarts from where it broke: never count bytes twice.
                    if done > before {
                        bar.set_position(done);
                        b.total.inc(done - before);
                    }
                }
            }
            PullEvent::Done { digest, bytes } => {
                if let Some(bar) = layers.remove(digest) {
                    bar.set_style(style(" {prefix:<14} {msg}"));
                    bar.finish_with_message(format!(
                        "Pull complete ({})",
                        super::ctx::human(bytes)
                    ));
                }
            }
            PullEvent::Unpacking => b.total.set_message("verifying and unpacking"),
        }
    }

    /// Leaves the final state of every bar on screen.
    pub fn finish(&self, summary: &str) {
        match &self.bars {
            Some(b) => {
                b.total.disable_steady_tick();
                b.total.finish_with_message(summary.to_string());
            }
            None => self.line(summary),
        }
    }
}
