//! The upload benchmark's reference (`bench/upload.py`): a plain loop of create-only PUTs of every file in a
//! folder, one after another, with the same client dm-handoff uploads with (`object_store`'s S3 store), as
//! `aws s3 cp` of each file would do. No ledger, no manifest order, no hashing: what any uploader pays.
//!
//! Usage: `raw_put ENDPOINT BUCKET PREFIX DIR` (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
//! Prints one JSON object: wall seconds, objects, bytes.

use std::time::Instant;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, bucket, prefix, dir] = args.as_slice() else {
        return Err("usage: raw_put ENDPOINT BUCKET PREFIX DIR".into());
    };
    let store = AmazonS3Builder::from_env()
        .with_endpoint(endpoint)
        .with_bucket_name(bucket)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_virtual_hosted_style_request(false)
        .build()?;
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let started = Instant::now();
    let (mut objects, mut bytes) = (0u64, 0u64);
    for name in names {
        let body = std::fs::read(std::path::Path::new(dir).join(&name))?;
        bytes += body.len() as u64;
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        store.put_opts(&Path::from(format!("{prefix}/{name}")), PutPayload::from(body), opts).await?;
        objects += 1;
    }
    println!("{{\"wall_s\": {:.3}, \"objects\": {objects}, \"bytes\": {bytes}}}", started.elapsed().as_secs_f64());
    Ok(())
}
