//! Path resolution for actuators that act as root on paths taken from alerts about
//! unprivileged users: follow a symlink only when root owns it.
//!
//! The daemon is root, but the paths it is asked to act on (quarantine, deny-open, block-exec)
//! name files in places users control. A user who owns a symlink anywhere along the path
//! chooses what root acts on: `/tmp/a -> /etc` turns "quarantine /tmp/a/shadow" into
//! "quarantine /etc/shadow". [`open`] walks the path one component at a time with
//! `openat(O_PATH | O_NOFOLLOW)` from the directory it already holds, so nothing is resolved
//! twice and a name swapped after it was checked cannot redirect the walk; a symlink is
//! inspected through its own descriptor (owner, then target), followed only when root owns
//! it, and otherwise the walk stops and names it. Callers then act relative to the
//! descriptors they got, never through the path string again.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Most symlinks followed in one resolution (the kernel's own limit is 40).
pub const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum SafePathError {
    #[error("{path:?}: an absolute path expected")]
    NotAbsolute { path: PathBuf },
    #[error(
        "{path} goes through {link}, a symlink owned by uid {uid} (not root); it is not followed"
    )]
    UntrustedSymlink {
        path: PathBuf,
        /// The symlink, as reached by the walk (earlier root-owned links resolved).
        link: PathBuf,
        uid: u32,
    },
    #[error("{path}: more than {MAX_SYMLINKS} symlinks")]
    TooManySymlinks { path: PathBuf },
    #[error("{path} has no final name")]
    NoName { path: PathBuf },
    #[error("{path}: {at}: {source}")]
    Io {
        path: PathBuf,
        /// How far the walk got.
        at: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SafePathError {
    /// Logs a path refused for going through a symlink not owned by root: a user steering
    /// what root acts on is worth a warning. `op` names the action, `instead` what it does
    /// about it. Other errors are the caller's to report.
    pub fn warn_if_untrusted(&self, op: &str, instead: &str) {
        if let SafePathError::UntrustedSymlink { path, link, uid } = self {
            tracing::warn!(
                path = %path.display(),
                link = %link.display(),
                owner_uid = uid,
                "{op}: the path goes through a symlink not owned by root; {instead}"
            );
        }
    }

    /// Whether the walk stopped because a name along the path does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SafePathError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// A file reached without following a symlink root does not own.
#[derive(Debug)]
pub struct Opened {
    /// An `O_PATH` descriptor of the file (usable as a `*at` directory, for `fstat`, and as
    /// `/proc/self/fd/N`).
    pub fd: OwnedFd,
    /// The path the walk took, without symlinks, `.` or `..` (what `realpath` gives).
    pub path: PathBuf,
}

impl Opened {
    /// `fstat` of the file.
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        let dup = self.fd.try_clone()?;
        File::from(dup).metadata()
    }
}

/// Opens the absolute `path` (`O_PATH`), following only root-owned symlinks, the last name
/// included; `..` goes back to the directory the walk came from.
pub fn open(path: &Path) -> Result<Opened, SafePathError> {
    if !path.is_absolute() {
        return Err(SafePathError::NotAbsolute {
            path: path.to_owned(),
        });
    }
    let io_err = |at: &Path, source: io::Error| SafePathError::Io {
        path: path.to_owned(),
        at: at.to_owned(),
        source,
    };
    let root = open_at(None, c"/").map_err(|e| io_err(Path::new("/"), e))?;
    // The directories from `/` down to where the walk is, each with its name.
    let mut dirs: Vec<(OwnedFd, OsString)> = vec![(root, OsString::new())];
    // Names still to walk, the next one last.
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, path);
    let mut hops = 0usize;
    let walked = |dirs: &[(OwnedFd, OsString)]| -> PathBuf {
        let mut p = PathBuf::from("/");
        p.extend(dirs.iter().skip(1).map(|(_, n)| n));
        p
    };
    while let Some(name) = pending.pop() {
        if name == ".." {
            if dirs.len() > 1 {
                dirs.pop();
            }
            continue;
        }
        let here = walked(&dirs);
        let at = here.join(&name);
        let (dir, _) = dirs
            .last()
            .ok_or_else(|| io_err(&here, io::ErrorKind::NotFound.into()))?;
        let cname = CString::new(name.as_bytes())
            .map_err(|_| io_err(&at, io::ErrorKind::InvalidInput.into()))?;
        let fd = open_at(Some(dir), &cname).map_err(|e| io_err(&at, e))?;
        let meta = File::from(fd.try_clone().map_err(|e| io_err(&at, e))?)
            .metadata()
            .map_err(|e| io_err(&at, e))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            if meta.uid() != 0 {
                return Err(SafePathError::UntrustedSymlink {
                    path: path.to_owned(),
                    link: at,
                    uid: meta.uid(),
                });
            }
            hops += 1;
            if hops > MAX_SYMLINKS {
                return Err(SafePathError::TooManySymlinks {
                    path: path.to_owned(),
                });
            }
            // Read through the link's own descriptor: the link checked is the link read.
            let target = read_link(&fd).map_err(|e| io_err(&at, e))?;
            let target = Path::new(&target);
            if target.is_absolute() {
                dirs.truncate(1);
            }
            push_components(&mut pending, target);
        } else if ft.is_dir() {
            dirs.push((fd, name));
        } else if pending.is_empty() {
            return Ok(Opened { fd, path: at });
        } else {
            return Err(io_err(&at, io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
    }
    let path = walked(&dirs);
    let (fd, _) = dirs
        .pop()
        .ok_or_else(|| io_err(&path, io::ErrorKind::NotFound.into()))?;
    Ok(Opened { fd, path })
}

/// The directory holding `path`'s last name, opened as [`open`] does, and that name (not
/// resolved: the caller looks at it relative to the directory, without following it).
pub fn open_parent(path: &Path) -> Result<(Opened, OsString), SafePathError> {
    let (Some(parent), Some(Component::Normal(name))) =
        (path.parent(), path.components().next_back())
    else {
        return Err(SafePathError::NoName {
            path: path.to_owned(),
        });
    };
    let dir = open(parent)?;
    if !dir.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(SafePathError::Io {
            path: path.to_owned(),
            at: dir.path,
            source: io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    Ok((dir, name.to_owned()))
}

/// Queues `path`'s names (`.` dropped, `..` kept) so that the first comes out first.
fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    let names: Vec<&OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            Component::ParentDir => Some(OsStr::new("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    pending.extend(names.into_iter().rev().map(OsStr::to_owned));
}

/// `openat(dir, name, O_PATH | O_NOFOLLOW)` (`dir` `None`: relative to the working
/// directory, only used for "/").
fn open_at(dir: Option<&OwnedFd>, name: &CStr) -> io::Result<OwnedFd> {
    openat(
        dir.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd),
        name,
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
    )
}

/// `openat(2)` (`O_CLOEXEC` added): the one raw open behind the walk and the actuators'
/// operations relative to the directories it opened.
pub(crate) fn openat(
    dir: RawFd,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    #[expect(unsafe_code, reason = "openat has no safe wrapper in std")]
    // SAFETY: `name` is NUL-terminated and outlives the call; the kernel checks `dir`; `mode`
    // is passed as the variadic argument openat reads for O_CREAT.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    #[expect(unsafe_code, reason = "taking ownership of a new descriptor")]
    // SAFETY: `fd` was just returned by openat and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(owned)
}

/// The target of the symlink `link` is an `O_PATH | O_NOFOLLOW` descriptor of
/// (`readlinkat` with an empty name).
fn read_link(link: &OwnedFd) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    #[expect(unsafe_code, reason = "readlinkat has no safe wrapper in std")]
    // SAFETY: the empty name is NUL-terminated; `buf` is writable for its whole length.
    let n = unsafe {
        libc::readlinkat(
            link.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    if n == 0 || n >= buf.len() {
        // Empty targets do not resolve; a full buffer may be truncated.
        return Err(io::Error::from_raw_os_error(if n == 0 {
            libc::ENOENT
        } else {
            libc::ENAMETOOLONG
        }));
    }
    buf.truncate(n);
    Ok(OsString::from_vec(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{lchown, symlink};

    fn is_root() -> bool {
        let euid = crate::pack::permissions::effective_uid();
        euid == 0
    }

    /// A link owned by root when the tests run as root, else by the test user (untrusted).
    fn link(target: &Path, at: &Path) {
        symlink(target, at).unwrap();
    }

    fn ino(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn a_plain_file_opens_at_its_own_path() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap().join("f");
        std::fs::write(&real, b"x").unwrap();
        let o = open(&real).unwrap();
        assert_eq!(o.path, real);
        assert_eq!(o.metadata().unwrap().ino(), ino(&real));
        assert!(matches!(
            open(Path::new("relative")),
            Err(SafePathError::NotAbsolute { .. })
        ));
        let missing = open(&real.join("nope")).unwrap_err();
        assert!(
            matches!(&missing, SafePathError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOTDIR)),
            "{missing}"
        );
        assert!(open(&dir.path().join("nope")).unwrap_err().is_not_found());
    }

    #[test]
    fn root_owned_links_are_followed_and_others_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(base.join("real")).unwrap();
        std::fs::write(base.join("real/f"), b"x").unwrap();
        let l = base.join("l");
        link(Path::new("real/f"), &l);
        if is_root() {
            let o = open(&l).unwrap();
            assert_eq!(o.path, base.join("real/f"));
            assert_eq!(o.metadata().unwrap().ino(), ino(&base.join("real/f")));
            lchown(&l, Some(65534), Some(65534)).unwrap();
        }
        match open(&l) {
            Err(SafePathError::UntrustedSymlink { link, uid, .. }) => {
                assert_eq!(link, l);
                assert_ne!(uid, 0);
            }
            other => panic!("refusal expected, got {other:?}"),
        }
        let msg = open(&l).unwrap_err().to_string();
        assert!(
            msg.contains(&l.display().to_string()) && msg.contains("uid"),
            "{msg}"
        );
    }

    #[test]
    fn a_parent_directory_that_is_a_user_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(base.join("etc")).unwrap();
        std::fs::write(base.join("etc/shadow"), b"x").unwrap();
        let a = base.join("a");
        link(&base.join("etc"), &a);
        if is_root() {
            lchown(&a, Some(65534), Some(65534)).unwrap();
        }
        let err = open_parent(&a.join("shadow")).unwrap_err();
        assert!(
            matches!(&err, SafePathError::UntrustedSymlink { link, .. } if *link == a),
            "{err:?}"
        );
        assert!(matches!(
            open(&a.join("shadow")),
            Err(SafePathError::UntrustedSymlink { .. })
        ));
        // The directory itself, not through the link, is fine.
        let (parent, name) = open_parent(&base.join("etc/shadow")).unwrap();
        assert_eq!((parent.path, name), (base.join("etc"), "shadow".into()));
    }

    #[test]
    fn dotdot_goes_back_along_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(base.join("x/y")).unwrap();
        std::fs::write(base.join("f"), b"x").unwrap();
        let o = open(&base.join("x/y/../../f")).unwrap();
        assert_eq!(o.path, base.join("f"));
        assert_eq!(open(Path::new("/../..")).unwrap().path, Path::new("/"));
        if is_root() {
            // `..` after a root-owned link to a directory is the link target's parent.
            link(&base.join("x/y"), &base.join("ly"));
            std::fs::write(base.join("x/g"), b"g").unwrap();
            assert_eq!(open(&base.join("ly/../g")).unwrap().path, base.join("x/g"));
        }
    }

    #[test]
    fn a_symlink_loop_ends() {
        if !is_root() {
            eprintln!("SKIPPED (needs root: user links are never followed): a_symlink_loop_ends");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        link(&base.join("b"), &base.join("a"));
        link(&base.join("a"), &base.join("b"));
        assert!(matches!(
            open(&base.join("a")),
            Err(SafePathError::TooManySymlinks { .. })
        ));
    }
}
