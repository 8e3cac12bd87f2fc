//! A pipeline's OAuth 2.0 tokens on disk (SPEC 8.1): `<state_dir>/tokens/<pipeline>.json`, owner-only.
//!
//! Not in sled, on purpose: the state database has one owner (the daemon while it runs), but a token file
//! must be writable by `dm-handoff auth` beside a running daemon, and by every process that refreshes. So it
//! is a file of its own with its own lock:
//!
//! - **Written atomically and durably**: a temporary file (0600, created exclusively) in the same folder,
//!   written, fsynced, renamed over the old one, then the folder fsynced. A reader sees the old pair or the
//!   new one, never half of either, and once [`TokenFile::save`] returns the new pair survives a power cut.
//!   X's refresh tokens are single-use, so this is what stands between a refresh and a pipeline locked out:
//!   a refreshed pair is saved before its access token is first used.
//! - **Locked for read-refresh-write**: [`TokenFile::lock`] takes an exclusive `flock` on
//!   `<pipeline>.lock` beside it (not on the JSON file, which a rename replaces). Whoever refreshes holds it
//!   from reading the file to saving the new pair, so two processes never spend the same refresh token.
//! - The folder is 0700 and the files 0600 whatever the umask; tokens never leave these files except in
//!   requests to X ([`Tokens`]'s `Debug` is redacted).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

/// The layout version of a token file.
const VERSION: u32 = 1;

/// One token pair as stored. Never printed: `Debug` shows only what is safe (times, scope, whether a
/// refresh token is held).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    #[serde(default)]
    pub version: u32,
    /// The app the tokens were issued to: a refresh must name the same client.
    pub client_id: String,
    pub access_token: String,
    /// Present when `offline.access` was granted; single-use, replaced by every refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Unix ms when the pair was issued (our clock, at the answer).
    pub issued_at_ms: u64,
    /// Unix ms when the access token expires (`issued_at_ms` + `expires_in`).
    pub expires_at_ms: u64,
    /// The granted scopes, space-separated, as X answered them.
    #[serde(default)]
    pub scope: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("client_id", &self.client_id)
            .field("access_token", &"<redacted>")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "<redacted>"))
            .field("issued_at_ms", &self.issued_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("scope", &self.scope)
            .finish()
    }
}

impl Tokens {
    /// A pair issued now that lives `expires_in`.
    pub fn issued(
        client_id: &str,
        access_token: String,
        refresh_token: Option<String>,
        expires_in: Duration,
        scope: String,
    ) -> Tokens {
        let now = unix_ms(SystemTime::now());
        let lifetime = u64::try_from(expires_in.as_millis()).unwrap_or(u64::MAX);
        Tokens {
            version: VERSION,
            client_id: client_id.to_string(),
            access_token,
            refresh_token,
            issued_at_ms: now,
            expires_at_ms: now.saturating_add(lifetime),
            scope,
        }
    }

    /// When the access token should be renewed: once less than a fifth of its lifetime is left (SPEC 8.1).
    pub fn renew_at_ms(&self) -> u64 {
        let lifetime = self.expires_at_ms.saturating_sub(self.issued_at_ms);
        self.expires_at_ms.saturating_sub(lifetime / 5)
    }

    /// Whether the access token is past its renewal point at `now_ms`.
    pub fn due_for_renewal(&self, now_ms: u64) -> bool {
        now_ms >= self.renew_at_ms()
    }

    /// Whether the access token has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }
}

/// Why the token file could not be used. Messages name the file and the fix, never a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("no OAuth tokens in {}", .0.display())]
    Missing(PathBuf),
    #[error("the token file {}: {op}: {source}", path.display())]
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("refusing the token file {}: {detail}", path.display())]
    Refused { path: PathBuf, detail: String },
    #[error("the token file {} is unreadable ({detail})", path.display())]
    Corrupt { path: PathBuf, detail: String },
}

/// The token file of one pipeline.
#[derive(Clone, Debug)]
pub struct TokenFile {
    path: PathBuf,
}

/// The exclusive lock of a token file, held while reading, refreshing and saving. Dropping it unlocks.
#[derive(Debug)]
pub struct TokenLock {
    _file: File,
}

impl TokenFile {
    /// The token file at `path` (`config::token_file` gives a pipeline's).
    pub fn new(path: PathBuf) -> TokenFile {
        TokenFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn io(&self, op: &'static str) -> impl Fn(std::io::Error) -> TokenFileError + '_ {
        move |source| TokenFileError::Io { path: self.path.clone(), op, source }
    }

    /// Reads the stored pair; `Missing` when none was ever stored.
    pub fn load(&self) -> Result<Tokens, TokenFileError> {
        // Owner-only and a regular file, like every secret file (a FIFO here would hang the run).
        let bytes = match crate::config::read_secret_file(&self.path, crate::config::SecretOrigin::Plain) {
            Ok(b) => b,
            Err(crate::config::SecretFileError::Missing) => return Err(TokenFileError::Missing(self.path.clone())),
            Err(crate::config::SecretFileError::Io(e)) => return Err(self.io("reading it")(e)),
            Err(e @ crate::config::SecretFileError::Refused(_)) => {
                return Err(TokenFileError::Refused { path: self.path.clone(), detail: e.to_string() })
            }
        };
        // serde's message could quote a value (a token): keep only its category.
        let t: Tokens = serde_json::from_slice(&bytes).map_err(|e| TokenFileError::Corrupt {
            path: self.path.clone(),
            detail: format!("{:?} at line {}", e.classify(), e.line()),
        })?;
        if t.access_token.is_empty() || t.client_id.is_empty() {
            return Err(TokenFileError::Corrupt { path: self.path.clone(), detail: "no access token".into() });
        }
        Ok(t)
    }

    /// Creates the folder (0700) and takes the file's exclusive lock, waiting for another holder (run it off
    /// the async threads: `tokio::task::spawn_blocking`).
    pub fn lock(&self) -> Result<TokenLock, TokenFileError> {
        self.make_dir()?;
        let lock_path = self.path.with_extension("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(self.io("opening its lock"))?;
        FileExt::lock_exclusive(&file).map_err(self.io("locking it"))?;
        Ok(TokenLock { _file: file })
    }

    fn make_dir(&self) -> Result<(), TokenFileError> {
        let dir = self.dir();
        if !dir.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(self.io("creating its folder"))?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(self.io("making its folder 0700"))?;
        Ok(())
    }

    /// Stores a pair atomically and durably (see the module docs). The caller holds the lock.
    pub fn save(&self, tokens: &Tokens, _lock: &TokenLock) -> Result<(), TokenFileError> {
        self.make_dir()?;
        let bytes = serde_json::to_vec_pretty(tokens)
            .map_err(|e| TokenFileError::Corrupt { path: self.path.clone(), detail: format!("{:?}", e.classify()) })?;
        let file_name = self.path.file_name().and_then(|n| n.to_str()).unwrap_or("tokens.json");
        let tmp = self.dir().join(format!(".{file_name}.{}.tmp", std::process::id()));
        // A temporary file left by a process that died mid-save (same PID reused) is ours to replace.
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(self.io("creating a temporary file"))?;
            f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(self.io("making it 0600"))?;
            f.write_all(&bytes).map_err(self.io("writing it"))?;
            f.sync_all().map_err(self.io("syncing it"))?;
            fs::rename(&tmp, &self.path).map_err(self.io("renaming it into place"))?;
            File::open(self.dir()).and_then(|d| d.sync_all()).map_err(self.io("syncing its folder"))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(access: &str) -> Tokens {
        Tokens::issued("client", access.into(), Some(format!("r-{access}")), Duration::from_secs(100), "dm.read".into())
    }

    #[test]
    fn saves_atomically_owner_only_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path().join("state/tokens/p.json"));
        assert!(matches!(file.load(), Err(TokenFileError::Missing(_))));
        let lock = file.lock().unwrap();
        file.save(&pair("a1"), &lock).unwrap();
        file.save(&pair("a2"), &lock).unwrap();
        drop(lock);
        assert_eq!(file.load().unwrap().access_token, "a2");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(file.path()), 0o600);
        assert_eq!(mode(&dir.path().join("state/tokens")), 0o700);
        let names: Vec<String> = fs::read_dir(dir.path().join("state/tokens"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "no temporary file left: {names:?}");
    }

    #[test]
    fn renewal_is_due_with_a_fifth_of_the_lifetime_left_and_debug_hides_tokens() {
        let t = Tokens { issued_at_ms: 1_000, expires_at_ms: 11_000, ..pair("secret-access") };
        assert_eq!(t.renew_at_ms(), 9_000);
        assert!(!t.due_for_renewal(8_999) && t.due_for_renewal(9_000));
        assert!(!t.expired(10_999) && t.expired(11_000));
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret-access") && shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn a_corrupt_file_is_an_error_that_quotes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        fs::write(&path, "{\"access_token\": \"leaky-token\", ").unwrap();
        // Owner-only, as the daemon writes it: only then is the content read at all.
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let e = TokenFile::new(path).load().unwrap_err().to_string();
        assert!(e.contains("unreadable") && !e.contains("leaky-token"), "{e}");
    }

    #[test]
    fn the_lock_excludes_another_holder() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path().join("p.json"));
        let held = file.lock().unwrap();
        let other = OpenOptions::new().read(true).write(true).open(dir.path().join("p.lock")).unwrap();
        assert!(!FileExt::try_lock_exclusive(&other).unwrap_or(false), "a second lock while held");
        drop(held);
        assert!(FileExt::try_lock_exclusive(&other).unwrap_or(false), "free once dropped");
    }
}
