//! Progress of a long operation on stderr: a bar redrawn in place on a terminal, a plain line
//! every few seconds otherwise (logs, CI).

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

pub struct Progress {
    what: &'static str,
    unit: &'static str,
    tty: bool,
    started: Instant,
    last_line: Option<Instant>,
}

impl Progress {
    pub fn new(what: &'static str, unit: &'static str) -> Self {
        Progress {
            what,
            unit,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_line: None,
        }
    }

    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64().max(0.001)
    }

    /// Shows `done` of `total` (a total of 0 shows a full bar).
    pub fn show(&mut self, done: i64, total: i64) {
        let rate = done as f64 / self.elapsed_s();
        let unit = self.unit;
        if self.tty {
            let width = 30usize;
            let filled = if total > 0 {
                ((done.clamp(0, total) as usize) * width) / total as usize
            } else {
                width
            };
            eprint!(
                "\r[{}{}] {done}/{total} {unit}, {rate:.0}/s   ",
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
            let _ = std::io::stderr().flush();
        } else if self
            .last_line
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
            || done >= total
        {
            eprintln!("{} progress: {done}/{total} {unit}, {rate:.0}/s", self.what);
            self.last_line = Some(Instant::now());
        }
    }

    /// Ends the bar's line.
    pub fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
