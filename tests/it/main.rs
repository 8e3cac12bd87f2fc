//! The integration tests: the real `dm-handoff` binary against the built-in simulator, which runs in
//! this test process so a test can read its ground truth and its request log.
//!
//! One test crate (matklad's layout): [`support`] is the harness; each other module covers one area of
//! the contract in `SPEC.md`. Every test asserts on what the binary produced (JSONL lines, its state
//! after a restart, its exit code and output) and on what the simulator was asked.

mod support;

mod at_most_once;
mod cli;
mod crash;
mod cursors;
mod daemon;
mod faults;
mod hostfix;
mod hostile;
mod hostile_server;
mod inbox;
mod install_cli;
mod loader;
mod metrics;
mod oauth;
mod outbound;
mod privacy;
mod providers;
mod rotation;
mod sinkfix;
mod sync;
mod upload;
