//! Writing `bird.conf` so that BIRD never reads half a file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// Replaces `path` with `text` atomically (a temporary file in the same directory, synced,
/// then renamed over it), unless it already holds exactly `text`. Returns whether the file
/// changed (a reload is then due). The file is created mode 0600: it may hold TCP MD5
/// passwords.
pub fn install(path: &Path, text: &str) -> io::Result<bool> {
    match fs::read(path) {
        Ok(old) if old == text.as_bytes() => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: not a file name", path.display())))?;
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename itself survives a crash once the directory is synced.
    File::open(dir)?.sync_all()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("vrouter-bgp-install-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn install_reports_a_change_only_when_the_content_differs() {
        let d = dir("change");
        let p = d.join("bird.conf");
        assert!(install(&p, "a\n").unwrap(), "a new file is a change");
        assert!(!install(&p, "a\n").unwrap(), "the same text is no change");
        assert!(install(&p, "b\n").unwrap());
        assert_eq!(fs::read_to_string(&p).unwrap(), "b\n");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("bird.conf")], "no temporary file left");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn install_into_a_missing_directory_fails_and_leaves_nothing() {
        let d = dir("missing");
        let p = d.join("nope").join("bird.conf");
        assert_eq!(install(&p, "x").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(fs::read_dir(&d).unwrap().next().is_none());
        fs::remove_dir_all(&d).unwrap();
    }
}
