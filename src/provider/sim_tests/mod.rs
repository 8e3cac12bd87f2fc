//! The adapters against the built-in simulator (`dm-handoff-simulator`) on loopback.

mod getxapi;
mod x_api_v2;
