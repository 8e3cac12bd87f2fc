//! The `dm-handoff` binary: parse the command line, set up logging, run the command, map the result to
//! an exit code. User errors print as one line (`error: …`), never a panic or a backtrace.

use std::io::IsTerminal;

use clap::Parser;
use dm_handoff::app::{self, Exit};
use dm_handoff::cli::{Command, LogFormat, Opts};
use tracing_subscriber::EnvFilter;

fn main() {
    let opts = Opts::parse();
    // A file-size limit (RLIMIT_FSIZE) should fail the write with EFBIG, which we handle like a full disk,
    // instead of killing the process with SIGXFSZ in the middle of a record.
    // SAFETY: setting a signal's disposition to SIG_IGN before any thread starts has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    init_logging(&opts);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(Exit::Failed as i32);
        }
    };
    let code = match runtime.block_on(app::run(opts)) {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("error: {e:#}");
            app::exit_code_for(&e)
        }
    };
    // Let background tasks (signal watchers) go without waiting on them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code as i32);
}

fn init_logging(opts: &Opts) {
    // Our own crate at the chosen level; dependencies only warn unless RUST_LOG says otherwise.
    let level = opts.log_level.as_deref().unwrap_or(match opts.command {
        Command::Demo(_) => "warn",
        _ => "info",
    });
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,dm_handoff={level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match opts.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text | LogFormat::Auto => {
            builder.with_ansi(std::io::stderr().is_terminal()).init()
        }
    }
}
