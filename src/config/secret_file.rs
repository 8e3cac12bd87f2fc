//! Reading a file that holds a secret (an `*_file` key, the OAuth token store) the way ssh reads a private
//! key: only a regular file that no one but its owner can read.
//!
//! - Opened with `O_NONBLOCK` and checked on the open descriptor: a FIFO (or a device) named as the key file
//!   would otherwise block `sync` for ever in `open` or `read`; checking the descriptor, not the path,
//!   leaves no window for a swap between the check and the read.
//! - A group- or world-readable file is refused rather than warned about: a warning scrolls by in a journal
//!   while the key stays readable to every local user.
//! - A systemd credential (a file in `$CREDENTIALS_DIRECTORY`) is exempt from the mode rule only: for a
//!   service with `User=` systemd writes it 0400, root-owned, and grants that user read through a POSIX ACL,
//!   whose mask `stat` shows in the group bits (mode 0440) although no group can read it; the folder is a
//!   private read-only mount of the unit, so the mode says nothing there. It must still be a regular file.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The most a secret file may hold; keys and token pairs are a few hundred bytes, this bounds a mistake
/// (a log file named as the key file).
const MAX_SECRET: u64 = 1024 * 1024;

/// Why a secret file was refused, as the end of a sentence naming the file (never its content).
#[derive(Debug)]
pub enum SecretFileError {
    /// No such file (the caller may treat that as "nothing stored yet").
    Missing,
    /// Exists but may not be used: the reason and the fix.
    Refused(String),
    /// The system refused an open or a read.
    Io(std::io::Error),
}

impl std::fmt::Display for SecretFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretFileError::Missing => f.write_str("it does not exist"),
            SecretFileError::Refused(why) => f.write_str(why),
            SecretFileError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Whose file a secret file is, which decides whether its mode is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretOrigin {
    /// A file the user made (or the daemon wrote): owner-only or refused.
    Plain,
    /// A systemd credential in `$CREDENTIALS_DIRECTORY`: its mode is systemd's (see the module docs).
    Credential,
}

/// Reads a secret file: a regular file, owner-only (no group or other permission bits) unless it is a
/// systemd credential, at most 1 MiB.
pub fn read_secret_file(path: &Path, origin: SecretOrigin) -> Result<Vec<u8>, SecretFileError> {
    let mut file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SecretFileError::Missing),
        Err(e) => return Err(SecretFileError::Io(e)),
    };
    let meta = file.metadata().map_err(SecretFileError::Io)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(SecretFileError::Refused(format!("it is {what}, not a regular file; point the key at a file")));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 && origin == SecretOrigin::Plain {
        return Err(SecretFileError::Refused(format!(
            "it is readable by other users (mode {mode:04o}); run `chmod 600 {}`",
            path.display()
        )));
    }
    if meta.len() > MAX_SECRET {
        return Err(SecretFileError::Refused(format!(
            "it holds {} bytes, more than a secret file should; check the path",
            meta.len()
        )));
    }
    clear_nonblock(&file);
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&mut file).take(MAX_SECRET).read_to_end(&mut bytes).map_err(SecretFileError::Io)?;
    Ok(bytes)
}

/// A regular file never blocks, but clear the flag anyway so the read is the ordinary one.
fn clear_nonblock(file: &File) {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; failure only leaves O_NONBLOCK set, harmless on a regular file.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, mode: u32) -> std::path::PathBuf {
        let p = dir.join("key");
        std::fs::write(&p, "xq_secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn an_owner_only_file_is_read_and_a_readable_one_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_secret_file(&write(dir.path(), 0o600), SecretOrigin::Plain).unwrap(), b"xq_secret\n");
        assert_eq!(read_secret_file(&write(dir.path(), 0o400), SecretOrigin::Plain).unwrap(), b"xq_secret\n");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let p = write(dir.path(), mode);
            let e = read_secret_file(&p, SecretOrigin::Plain).unwrap_err().to_string();
            assert!(e.contains(&format!("chmod 600 {}", p.display())), "{mode:o}: {e}");
            assert!(!e.contains("xq_secret"), "{e}");
        }
        // A systemd credential as `stat` shows it for a `User=` service (0400 plus a read ACL: 0440).
        assert_eq!(read_secret_file(&write(dir.path(), 0o440), SecretOrigin::Credential).unwrap(), b"xq_secret\n");
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer ever opens it: a blocking open would hang this test.
        for origin in [SecretOrigin::Plain, SecretOrigin::Credential] {
            let e = read_secret_file(&fifo, origin).unwrap_err().to_string();
            assert!(e.contains("a FIFO, not a regular file"), "{e}");
        }
        let e = read_secret_file(dir.path(), SecretOrigin::Plain).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        assert!(matches!(
            read_secret_file(&dir.path().join("none"), SecretOrigin::Plain),
            Err(SecretFileError::Missing)
        ));
    }
}
