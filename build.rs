//! Stamps the git revision into `dm-handoff --version` when built from a checkout. A source tarball, a
//! crate download or a machine without git builds just as well: the version is then the crate's alone.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let revision = revision();
    // Empty when unknown, so `env!` always has a value to read.
    println!("cargo:rustc-env=DM_HANDOFF_GIT_REVISION={}", revision.unwrap_or_default());
}

/// `git rev-parse --short HEAD`, if this is a checkout and git runs; a rebuild follows HEAD and its branch.
fn revision() -> Option<String> {
    let dir = git_dir()?;
    // HEAD moves on checkout; the branch file it names moves on commit (or packed-refs after a gc).
    println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
    if let Ok(head) = std::fs::read_to_string(dir.join("HEAD")) {
        if let Some(name) = head.trim().strip_prefix("ref: ") {
            // A worktree keeps its HEAD in its own folder but its refs in the common one.
            let common = std::fs::read_to_string(dir.join("commondir"))
                .map(|c| dir.join(c.trim()))
                .unwrap_or_else(|_| dir.clone());
            println!("cargo:rerun-if-changed={}", common.join(name).display());
            println!("cargo:rerun-if-changed={}", common.join("packed-refs").display());
        }
    }
    let out = Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok()?;
    let rev = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !rev.is_empty() && rev.bytes().all(|b| b.is_ascii_hexdigit())).then_some(rev)
}

/// The git directory of the checkout this crate sits in: `.git` itself, or the folder a worktree's `.git`
/// file points to. None outside a checkout.
fn git_dir() -> Option<std::path::PathBuf> {
    let root = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let dot = root.join(".git");
    if dot.is_dir() {
        return Some(dot);
    }
    let text = std::fs::read_to_string(&dot).ok()?;
    let target = text.trim().strip_prefix("gitdir: ")?;
    Some(root.join(target))
}
