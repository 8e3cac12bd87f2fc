//! Media checks: type and size before any credit is spent.

use super::job::MediaSource;
use super::keys::fnv1a_128;
use super::JobError;
use crate::provider::Upload;

/// The largest media Xquik takes (documented for URL uploads; files are held to it too).
pub const MAX_MEDIA_BYTES: u64 = 15_728_640;

/// The media types Xquik takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaType {
    Avif,
    Gif,
    Jpeg,
    Png,
    Webp,
    Mp4,
}

impl MediaType {
    fn from_ext(ext: &str) -> Option<MediaType> {
        Some(match ext.to_ascii_lowercase().as_str() {
            "avif" => MediaType::Avif,
            "gif" => MediaType::Gif,
            "jpg" | "jpeg" => MediaType::Jpeg,
            "png" => MediaType::Png,
            "webp" => MediaType::Webp,
            "mp4" => MediaType::Mp4,
            _ => return None,
        })
    }

    /// What the first bytes of a file say it is; None for anything else (HEIC, QuickTime, text, …).
    pub fn sniff(b: &[u8]) -> Option<MediaType> {
        match b {
            [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, ..] => Some(MediaType::Png),
            [0xff, 0xd8, 0xff, ..] => Some(MediaType::Jpeg),
            [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(MediaType::Gif),
            [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some(MediaType::Webp),
            [_, _, _, _, b'f', b't', b'y', b'p', brand @ ..] if brand.len() >= 4 => match &brand[..4] {
                b"avif" | b"avis" => Some(MediaType::Avif),
                b"isom" | b"iso2" | b"iso4" | b"iso5" | b"iso6" | b"mp41" | b"mp42" | b"avc1" | b"M4V " | b"dash"
                | b"MSNV" | b"f4v " => Some(MediaType::Mp4),
                _ => None,
            },
            _ => None,
        }
    }

    fn mime(self) -> &'static str {
        match self {
            MediaType::Avif => "image/avif",
            MediaType::Gif => "image/gif",
            MediaType::Jpeg => "image/jpeg",
            MediaType::Png => "image/png",
            MediaType::Webp => "image/webp",
            MediaType::Mp4 => "video/mp4",
        }
    }

    fn name(self) -> &'static str {
        match self {
            MediaType::Avif => "AVIF",
            MediaType::Gif => "GIF",
            MediaType::Jpeg => "JPEG",
            MediaType::Png => "PNG",
            MediaType::Webp => "WebP",
            MediaType::Mp4 => "MP4",
        }
    }
}

const SUPPORTED: &str = "AVIF, GIF, JPEG, PNG, WebP or MP4";

/// Media that passed the checks, ready to upload.
#[derive(Clone, Debug)]
pub struct CheckedMedia {
    pub upload: Upload,
    /// Stable identity for keys and the ledger: `url:<url>`, or `file:<name>:<bytes>:<content hash>` (the
    /// content, not the path, so the same file sent from another folder is the same job).
    pub identity: String,
}

/// Checks type and size before any credit is spent: a file by extension, magic bytes and size; a URL by
/// its extension (its size is the provider's to check, up to [`MAX_MEDIA_BYTES`]).
pub fn check_media(src: &MediaSource) -> Result<CheckedMedia, JobError> {
    let bad = |code: &'static str, detail: String| Err(JobError::input(code, detail));
    match src {
        MediaSource::Url(url) => {
            let path = url.split(['?', '#']).next().unwrap_or_default();
            let path = path.get(8..).and_then(|rest| rest.split_once('/')).map(|(_, p)| p).unwrap_or("");
            let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
            if MediaType::from_ext(ext).is_none() {
                return bad(
                    "unsupported_media",
                    format!("media URL must end in the file type ({SUPPORTED}: .avif .gif .jpg .png .webp .mp4)"),
                );
            }
            Ok(CheckedMedia { upload: Upload::Url(url.clone()), identity: format!("url:{url}") })
        }
        MediaSource::File(path) => {
            let shown = path.display();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let Some(by_ext) = name.rsplit_once('.').and_then(|(_, e)| MediaType::from_ext(e)) else {
                return bad("unsupported_media", format!("{shown}: not a supported media file ({SUPPORTED})"));
            };
            let meta = match std::fs::metadata(path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => return bad("media_unreadable", format!("{shown} is not a file")),
                Err(e) => return bad("media_unreadable", format!("cannot read {shown}: {e}")),
            };
            if meta.len() == 0 {
                return bad("media_empty", format!("{shown} is empty"));
            }
            if meta.len() > MAX_MEDIA_BYTES {
                return bad(
                    "media_too_large",
                    format!("{shown} is {} bytes; the limit is {MAX_MEDIA_BYTES} (15 MiB)", meta.len()),
                );
            }
            let bytes = std::fs::read(path)
                .map_err(|e| JobError::input("media_unreadable", format!("cannot read {shown}: {e}")))?;
            match MediaType::sniff(&bytes) {
                Some(t) if t == by_ext => {}
                Some(t) => {
                    return bad(
                        "media_type_mismatch",
                        format!(
                            "{shown} is named like {} but its content is {}; rename or convert it",
                            by_ext.name(),
                            t.name()
                        ),
                    )
                }
                None => {
                    return bad(
                        "unsupported_media",
                        format!("{shown}: the content is not {SUPPORTED} (checked its first bytes)"),
                    )
                }
            }
            let identity = format!("file:{name}:{}:{:032x}", bytes.len(), fnv1a_128(&[&bytes]));
            Ok(CheckedMedia { upload: Upload::File { name, mime: by_ext.mime(), bytes }, identity })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::outbound::FailKind;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn magic_bytes_name_the_type() {
        assert_eq!(MediaType::sniff(PNG), Some(MediaType::Png));
        assert_eq!(MediaType::sniff(b"\xff\xd8\xff\xe0\0\x10JFIF"), Some(MediaType::Jpeg));
        assert_eq!(MediaType::sniff(b"GIF89a\x01\0"), Some(MediaType::Gif));
        assert_eq!(MediaType::sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(MediaType::Webp));
        assert_eq!(MediaType::sniff(b"\0\0\0\x1cftypavif\0\0\0\0"), Some(MediaType::Avif));
        assert_eq!(MediaType::sniff(b"\0\0\0\x18ftypisom\0\0\x02\0"), Some(MediaType::Mp4));
        assert_eq!(MediaType::sniff(b"\0\0\0\x18ftypheic\0\0\0\0"), None);
        assert_eq!(MediaType::sniff(b"\0\0\0\x14ftypqt  \0\0\0\0"), None);
        assert_eq!(MediaType::sniff(b"hello"), None);
        assert_eq!(MediaType::sniff(b""), None);
    }

    #[test]
    fn media_files_are_checked_by_name_content_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            MediaSource::File(p)
        };
        let ok = check_media(&file("pic.PNG", PNG)).unwrap();
        assert!(matches!(&ok.upload, Upload::File { name, mime: "image/png", .. } if name == "pic.PNG"));
        // Identity follows the content, not the folder.
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let moved = check_media(&file("sub/pic.PNG", PNG)).unwrap();
        assert_eq!(ok.identity, moved.identity);
        let code = |src: MediaSource| check_media(&src).unwrap_err().code;
        assert_eq!(code(file("notes.txt", b"hello")), "unsupported_media");
        assert_eq!(code(file("fake.png", b"hello")), "unsupported_media");
        assert_eq!(code(file("photo.png", b"\xff\xd8\xff\xe0")), "media_type_mismatch");
        assert_eq!(code(file("empty.gif", b"")), "media_empty");
        assert_eq!(code(MediaSource::File(dir.path().join("missing.png"))), "media_unreadable");
        let big = dir.path().join("big.mp4");
        std::fs::File::create(&big).unwrap().set_len(MAX_MEDIA_BYTES + 1).unwrap();
        let e = check_media(&MediaSource::File(big)).unwrap_err();
        assert_eq!(e.code, "media_too_large");
        assert_eq!(e.kind, FailKind::Input);
    }

    #[test]
    fn media_urls_are_checked_by_extension() {
        let url = |u: &str| check_media(&MediaSource::Url(u.into()));
        assert!(url("https://cdn.test/a/b.webp?sig=1#x").is_ok());
        assert!(url("https://cdn.test/clip.MP4").is_ok());
        assert_eq!(url("https://cdn.test/a.bmp").unwrap_err().code, "unsupported_media");
        assert_eq!(url("https://cdn.test/noext").unwrap_err().code, "unsupported_media");
        assert_eq!(url("https://cdn.png").unwrap_err().code, "unsupported_media", "a host is not a file name");
    }
}
