//! Error classes and the retry policy that goes with them.

use std::time::Duration;

/// An error that knows how the caller should react to it.
pub trait Classified: std::error::Error + Send + Sync + 'static {
    fn class(&self) -> ErrorClass;
}

/// How the caller should react to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying as is: a lost connection, a server restarting, a lock conflict.
    Transient,
    /// Retrying will not help until someone changes something: the message says what.
    Definite,
}

/// Capped exponential backoff: 100 ms, 200 ms, … up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            next: initial,
            initial,
            max,
        }
    }

    /// The delay before the next attempt; each call doubles it, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        assert_eq!(b.next_delay(), Duration::from_millis(350));
        assert_eq!(b.next_delay(), Duration::from_millis(350));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}

/// An error and its causes on one line, `outer: middle: root`, skipping a cause whose text
/// the line already ends with.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Something a preflight check found wrong, with the way to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What was checked: `source app`, `source app table public.users`, `kafka`.
    pub subject: String,
    /// What is wrong and how to fix it, in one line.
    pub message: String,
    /// The system could not be reached (refused, timed out, restarting): `sluice run` waits
    /// for it rather than giving up, `sluice check` reports it as any other problem.
    pub unreachable: bool,
}

impl Problem {
    pub fn new(subject: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            subject: subject.into(),
            message: message.into(),
            unreachable: false,
        }
    }

    /// A problem that may pass by itself: the system did not answer.
    pub fn unreachable(subject: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            unreachable: true,
            ..Problem::new(subject, message)
        }
    }

    /// [`Problem::new`] or [`Problem::unreachable`], by the class of the error behind it.
    pub fn of_class(
        class: ErrorClass,
        subject: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        match class {
            ErrorClass::Transient => Problem::unreachable(subject, message),
            ErrorClass::Definite => Problem::new(subject, message),
        }
    }

    /// The problem an error is, with its causes.
    pub fn of_error<E: Classified>(subject: impl Into<String>, e: &E) -> Self {
        Problem::of_class(e.class(), subject, error_chain(e))
    }

    /// A connection that failed: the error, and the config section whose settings to check.
    pub fn of_connect<E: Classified>(subject: impl Into<String>, e: &E, section: &str) -> Self {
        let message = format!(
            "{}: check host, port, user, database and password_env of [{section}]",
            error_chain(e)
        );
        Problem::of_class(e.class(), subject, message)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}
