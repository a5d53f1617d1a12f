//! Files that hold data or secrets: readable by their owner only (directories 0700,
//! files 0600), whatever the process's umask, because the embedded store holds patient
//! records and the key file holds signing keys.

use std::{io, path::Path};

/// Creates `dir` (and missing parents) owner-only. A directory that already exists is
/// left as it is: it may be a shared one the operator chose (`/tmp`, a volume), and the
/// files in it are owner-only anyway.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        // The umask may have taken bits away, never added them; set the exact mode.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates `path` if missing (empty), and makes it owner-only either way.
pub fn private_file(path: &Path) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    drop(options.open(path)?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Whether `path` can be read or written by anyone but its owner (group or other
/// bits set): a secret in such a file is not a secret. A missing file is not shared.
pub fn is_shared(path: &Path) -> io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                Ok(Some(m.permissions().mode() & 0o777))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(None)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    #[test]
    fn a_file_others_can_read_is_shared() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("keys.json");
        assert_eq!(is_shared(&path).unwrap(), None, "missing");
        private_file(&path).unwrap();
        assert_eq!(is_shared(&path).unwrap(), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(is_shared(&path).unwrap(), Some(0o644));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(is_shared(&path).unwrap(), Some(0o640));
    }

    #[test]
    fn data_is_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data").join("nested");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("store.sqlite3");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        let fresh = dir.join("fresh");
        private_file(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
    }
}
