//! The commands, between the command line and the engine: each turns its arguments into a typed
//! [`Request`] (checked without the network or the state), and renders what the engine reports as the text
//! and exit code of a [`Report`]. The [`Request`] and [`Report`] types are also the control socket's wire
//! format, so a running daemon receives typed requests and a command prints the same text whether the
//! daemon or this process did the work.
//!
//! Nothing here opens a state directory or a pipeline: that is the host's.

pub mod auth;
pub mod check;
pub mod docs;
pub mod manage;
pub mod send;
pub mod state;
pub mod status;
pub mod sync;
pub mod verify;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::engine::manage::ManageRequest;
use crate::engine::outbound::SendRequest;
use crate::exit::Exit;

/// What a command asks of the process that owns the state: this one, or a running daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status {
        json: bool,
    },
    Sync {
        pipelines: Vec<String>,
        conversations: Vec<String>,
    },
    Backfill {
        pipelines: Vec<String>,
        conversations: Vec<String>,
        since: Option<String>,
        max_pages: Option<u64>,
    },
    /// The message text travels inside; it goes only through the owner-only socket, never a log.
    Send {
        request: SendRequest,
    },
    Manage {
        request: ManageRequest,
    },
}

/// What a command prints and how the process exits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub exit: Exit,
    pub stdout: String,
    pub stderr: String,
    /// The same outcome as one JSON object, printed instead of `stdout` under `--json`. It travels with the
    /// text because a daemon renders the report for a caller whose `--json` it does not know. None where
    /// `stdout` is JSON already (`status --json`, `schema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
}

impl Default for Report {
    fn default() -> Report {
        Report { exit: Exit::Ok, stdout: String::new(), stderr: String::new(), json: None }
    }
}

/// Whether this process prints JSON (`--json`): set once by `main`, read where a report is printed.
static JSON_OUTPUT: AtomicBool = AtomicBool::new(false);

/// Turns `--json` output on for this process.
pub fn set_json_output(on: bool) {
    JSON_OUTPUT.store(on, Ordering::Relaxed);
}

/// Whether `--json` was given.
pub fn json_output() -> bool {
    JSON_OUTPUT.load(Ordering::Relaxed)
}

impl Report {
    /// A failure as one `error:` line; under `--json` also `{"ok": false, "exit": N, "error": "…"}` on stdout,
    /// so a program reading stdout always gets one object.
    pub fn error(exit: Exit, line: impl std::fmt::Display) -> Report {
        let line = line.to_string();
        let json = serde_json::json!({ "ok": false, "exit": exit.code(), "error": line });
        Report { exit, stderr: format!("error: {line}\n"), json: Some(json), ..Report::default() }
    }

    /// Sets the JSON form of this report.
    pub fn with_json(mut self, json: serde_json::Value) -> Report {
        self.json = Some(json);
        self
    }

    /// Prints the report and returns its exit code. Under `--json` stdout gets the JSON form (one line)
    /// where there is one; the `error:` lines stay on stderr for the person watching.
    pub fn print(self) -> Exit {
        match (&self.json, json_output()) {
            (Some(v), true) => println!("{v}"),
            _ => print!("{}", self.stdout),
        }
        eprint!("{}", self.stderr);
        let _ = std::io::stdout().flush();
        self.exit
    }
}

/// The message of `--text T` or `--text-file PATH` (`-`: standard input), without the trailing newline
/// editors add. The text itself is never put into an error.
pub fn read_text(text: Option<&str>, file: Option<&Path>) -> Result<String, ConfigError> {
    let path = match (text, file) {
        (Some(t), _) => return Ok(t.to_string()),
        (None, Some(path)) => path,
        (None, None) => return Err(ConfigError("give the message with --text or --text-file".into())),
    };
    let mut text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| ConfigError(format!("cannot read the message from standard input: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read --text-file {}: {e}", path.display())))?
    };
    // Editors end files with a newline the writer did not mean to send.
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::outbound::{Job, NumberedJob};

    #[test]
    fn requests_and_reports_are_typed_on_the_wire() {
        let job = Job { to: "1".into(), text: "t".into(), media: None, idempotency_key: None };
        let req = Request::Send {
            request: SendRequest {
                pipeline: None,
                jobs: vec![NumberedJob { n: 1, job }],
                batch: false,
                resend_unknown: false,
            },
        };
        let wire = serde_json::to_string(&req).unwrap();
        assert!(wire.starts_with("{\"op\":\"send\""), "{wire}");
        assert!(matches!(serde_json::from_str(&wire).unwrap(), Request::Send { .. }));
        let report = Report { exit: Exit::Auth, stdout: "o".into(), stderr: "e".into(), json: None };
        let wire = serde_json::to_string(&report).unwrap();
        assert!(wire.contains("\"exit\":4"), "{wire}");
        assert_eq!(serde_json::from_str::<Report>(&wire).unwrap(), report);
        assert!(serde_json::from_str::<Report>("{\"exit\":5,\"stdout\":\"\",\"stderr\":\"\"}").is_err());
        // The JSON form crosses the control socket with the text.
        let report = Report::error(Exit::Config, "bad");
        let back: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(back.json.unwrap()["exit"], 2);
    }

    #[test]
    fn text_files_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.txt");
        std::fs::write(&f, "hello\r\n").unwrap();
        assert_eq!(read_text(None, Some(&f)).unwrap(), "hello");
        assert_eq!(read_text(Some("x\n"), Some(&f)).unwrap(), "x\n", "--text is taken as given");
        assert!(read_text(None, None).is_err());
        let e = read_text(None, Some(&dir.path().join("missing"))).unwrap_err().0;
        assert!(e.contains("--text-file"), "{e}");
    }
}
