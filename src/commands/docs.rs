//! `completions` and `man`: shell completions and the man page, generated from the same clap definition as
//! `--help`, so they can never disagree with it. The Debian package runs these at build time.

use clap::CommandFactory;

use super::Report;
use crate::cli::Opts;

/// The completion script for `shell`, for `dm-handoff completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Report {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Opts::command(), "dm-handoff", &mut out);
    Report { stdout: String::from_utf8_lossy(&out).into_owned(), ..Report::default() }
}

/// The man page (roff) for `dm-handoff man`: synopsis, global options and the list of commands.
pub fn man() -> Report {
    let mut out = Vec::new();
    match clap_mangen::Man::new(Opts::command()).render(&mut out) {
        Ok(()) => Report { stdout: String::from_utf8_lossy(&out).into_owned(), ..Report::default() },
        Err(e) => Report::error(crate::exit::Exit::Failed, format!("cannot render the man page: {e}")),
    }
}
