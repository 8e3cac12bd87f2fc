//! The adapters against the built-in simulator (`dm-handoff-simulator`) on loopback.

mod getxapi;
mod oauth;
mod x_api_v2;

use dm_handoff_simulator::{SimHandle, Simulator};

use crate::config::Pipeline;
use crate::record::Conversation;

/// The account handle the simulator's scenarios name; adapters see its derived numeric ID.
const ACCOUNT: &str = "acme_support";

/// A pipeline of `provider` against the simulator `h`, with fast retries; `keys` are its secret keys (the
/// names of variables, as the config holds them).
fn pipeline(h: &SimHandle, provider: &str, keys: &str) -> Pipeline {
    let text = format!(
        "[[pipelines]]\nname = \"t\"\nprovider = \"{provider}\"\nbase_url = \"{}\"\n{keys}\naccount = \"{}\"\n\
         retry_base = \"10ms\"\nretry_max = \"100ms\"\nmax_retries = 20\n",
        h.root_url(),
        Simulator::account_id(ACCOUNT)
    );
    crate::config::from_str(&text, std::path::Path::new("/t/p.toml"), std::path::Path::new("/t"))
        .expect("a valid test pipeline")
        .pipelines
        .remove(0)
}

fn peer(id: &str) -> Conversation {
    Conversation::Peer { user_id: id.into(), conversation_id: None }
}
