//! The `dm-handoff` binary: parse the command line, set up logging, hand the command to the host, map the
//! result to an exit code. User errors print as one line (`error: …`), never a panic or a backtrace.

use std::io::IsTerminal;

use clap::Parser;
use dm_handoff::cli::{Command, LogFormat, Opts};
use dm_handoff::exit::Exit;
use dm_handoff::host;
use tracing_subscriber::EnvFilter;

fn main() {
    let opts = Opts::parse();
    if opts.json && !opts.command.has_json() {
        eprintln!("error: --json: this command prints no JSON (it has no output a program reads); drop --json");
        std::process::exit(Exit::Config.code());
    }
    dm_handoff::commands::set_json_output(opts.json);
    // A file-size limit (RLIMIT_FSIZE) should fail the write with EFBIG, which we handle like a full disk,
    // instead of killing the process with SIGXFSZ in the middle of a record.
    // SAFETY: setting a signal's disposition to SIG_IGN before any thread starts has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    init_logging(&opts);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(Exit::Failed.code());
        }
    };
    let code = match runtime.block_on(host::run(opts)) {
        Ok(exit) => exit.code(),
        // The same `error:` line, and under --json the same line as a JSON object on stdout.
        Err(e) => host::failure(&e).print().code(),
    };
    // Let background tasks (signal watchers) go without waiting on them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}

fn init_logging(opts: &Opts) {
    // Our own crate at the chosen level; dependencies only warn unless RUST_LOG says otherwise.
    let level = opts.log_level.as_deref().unwrap_or(match opts.command {
        // Commands whose report is their stdout stay quiet unless asked.
        Command::Demo(_) | Command::Send(_) | Command::Lookup(_) | Command::UploadMedia(_) => "warn",
        _ => "info",
    });
    // sled's own log lines are left out: its failures reach the user as our one error line, which says what
    // to do (its lines would say the same thing a second time, in its words).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,sled=off,dm_handoff={level}")));
    // Under systemd (JOURNAL_STREAM names our stderr), send structured fields straight to journald.
    if opts.log_format == LogFormat::Auto && stderr_is_journal() {
        if let Ok(layer) = tracing_journald::layer() {
            use tracing_subscriber::prelude::*;
            tracing_subscriber::registry().with(filter).with(layer.with_syslog_identifier("dm-handoff".into())).init();
            return;
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match opts.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text | LogFormat::Auto => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Whether stderr is the journal stream systemd gave us (JOURNAL_STREAM is "device:inode" of it).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}
