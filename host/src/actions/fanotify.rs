//! Deny-open / deny-exec by path through fanotify permission events: the `deny-open` actuator.
//!
//! [`OpenDenier`] owns one fanotify group (`FAN_CLASS_CONTENT`) with an inode mark
//! (`FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM`) on every denied file; only opens and execs of marked
//! inodes reach us, and they are answered `FAN_DENY` (the caller sees EPERM) unless the opener
//! is the daemon itself, whose own opens are always allowed. BPF LSM would be the better tool
//! where the kernel has it enabled; this build uses fanotify everywhere.
//!
//! A permission event blocks the opener until answered, so the design is about never hanging
//! the system:
//! * the reader thread only reads, looks a file's (dev, inode) up in a small table and answers;
//! * every event it has read sits in a pending table with the time it was read, and a watchdog
//!   thread answers any event older than the response deadline with the configured default
//!   (allow unless configured otherwise);
//! * if the reader itself is wedged (busy longer than the deadline), the watchdog reads the
//!   queue itself and answers with the default;
//! * when the daemon exits, closing the group makes the kernel allow everything still pending.
//!
//! Marks are inode marks: the rule follows the file through renames, and a new file created at
//! the same path is not covered. So the path is resolved following only root-owned symlinks
//! ([`super::safe_path`]): a user's link would choose which file everyone is denied.
//!
//! **Exec content checks.** [`OpenDenier::check_execs`] adds a filesystem mark
//! (`FAN_MARK_FILESYSTEM`, `FAN_OPEN_EXEC_PERM` only) on every filesystem mounted without
//! `noexec` and hands each exec of a file no inode rule names to an [`ExecCheck`] (block-exec's
//! sha256 rules: `enforce_ebpf` hashes the file through the event's descriptor and denies a
//! match). Every exec on the host then waits for the reader, so the check must be cheap in the
//! common case (it caches per file); the deadline and watchdog above bound the worst case.
//! Filesystems mounted after the call are not marked until it is called again; a later call
//! marks only those (the group's fdinfo says which filesystems carry a mark).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::safe_path;
use super::{ActionError, ActionRequest, ActiveAction, Actuator, ExecContext, Outcome};
use crate::mountinfo::{self, Mount, MountinfoError};

/// What the opener gets when the daemon does not answer within the deadline; defined with the
/// rest of `[actions.deny]` in the config.
pub use crate::config::TimeoutDefault;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenySettings {
    /// Longest an open of a denied file waits for the daemon's answer.
    pub response_timeout: Duration,
    /// The answer when the deadline passes.
    pub on_timeout: TimeoutDefault,
}

impl DenySettings {
    /// The settings `[actions.deny]` describes.
    pub fn from_config(deny: &crate::config::DenyConfig) -> DenySettings {
        DenySettings {
            response_timeout: Duration::from_millis(deny.response_timeout_ms),
            on_timeout: deny.default_on_timeout,
        }
    }
}

impl Default for DenySettings {
    fn default() -> Self {
        DenySettings {
            response_timeout: Duration::from_millis(500),
            on_timeout: TimeoutDefault::Allow,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DenyError {
    #[error("fanotify_init failed (needs CAP_SYS_ADMIN and CONFIG_FANOTIFY_ACCESS_PERMISSIONS): {source}")]
    Init {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start thread {name}: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot deny {path}: {reason}")]
    Target { path: PathBuf, reason: String },
    #[error("fanotify_mark on {path} failed: {source}")]
    Mark {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no deny rule {id}")]
    NoRule { id: String },
    #[error("cannot list the executable filesystems: {source}")]
    Mounts {
        #[source]
        source: MountinfoError,
    },
}

/// Where the reader thread stops when stalled through [`OpenDenier::stall`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallPoint {
    /// Before reading the queue: events stay in the kernel.
    BeforeRead,
    /// After reading events, before answering them.
    BeforeAnswer,
}

/// Decides on the exec of a file no deny rule names while [`OpenDenier::check_execs`] is on.
/// The reader thread asks [`ExecCheck::known_verdict`] first; what that cannot answer goes to
/// the exec-check threads ([`EXEC_CHECKERS`]), so a slow check (hashing a large file) never
/// holds up the reader's other answers. It must never open files (that could wait on a
/// permission event this very group has to answer).
pub trait ExecCheck: Send + Sync {
    /// `true` allows the exec. `file` is the event's descriptor of the executed file, opened by
    /// the kernel for us (reading it raises no permission event); `meta` its metadata. May be
    /// slow; runs on an exec-check thread.
    fn allow_exec(&self, pid: i32, file: &File, meta: &std::fs::Metadata) -> bool;

    /// The answer when it is known without slow work (a cached hash, nothing to check), on
    /// the reader thread; `None` sends the exec to [`ExecCheck::allow_exec`].
    fn known_verdict(&self, _pid: i32, _meta: &std::fs::Metadata) -> Option<bool> {
        None
    }
}

/// Threads running slow exec checks. A user who execs many large, fresh files can keep them
/// busy; the execs queued behind then get the timeout default, but opens and execs the reader
/// can answer itself (deny rules, cached hashes) are not held up.
pub const EXEC_CHECKERS: usize = 2;

/// Execs waiting for an exec-check thread; when full, an exec gets the timeout default at once.
const EXEC_CHECK_QUEUE: usize = 256;

/// An exec handed to an exec-check thread.
struct ExecJob {
    fd: RawFd,
    pid: i32,
    file: Arc<File>,
    meta: std::fs::Metadata,
    check: Arc<dyn ExecCheck>,
}

/// Filesystem types that cannot hold an executable worth checking (pseudo filesystems).
const NO_EXEC_FSTYPES: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "bpf",
    "debugfs",
    "tracefs",
    "securityfs",
    "devpts",
    "mqueue",
    "pstore",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "binfmt_misc",
    "autofs",
    "efivarfs",
    "nsfs",
    "rpc_pipefs",
    "selinuxfs",
];

/// A filesystem the exec check marks: its device and its mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecFilesystem {
    /// The kernel's device encoding (`s_dev`), as fanotify's fdinfo prints it.
    pub dev: u32,
    /// (mount id, mount point) of each of its mounts, in mount table order. A filesystem mark
    /// is on the superblock, so any of them that path lookup reaches can carry it.
    pub mounts: Vec<(u64, PathBuf)>,
}

impl ExecFilesystem {
    /// The first mount point that path lookup resolves to this filesystem's own mount (one
    /// mounted over, or under a mount mounted over, leads elsewhere: marking through it would
    /// mark the filesystem on top). Without mount ids from `statx` (kernel < 5.8) the first
    /// mount point.
    fn reachable_mount_point(&self) -> Option<&Path> {
        self.mounts
            .iter()
            .find(|(id, point)| match mount_id_at(point) {
                Ok(Some(found)) => found == *id,
                Ok(None) => true,
                // A FUSE mount without allow_other refuses even root: execs there go unchecked
                // unless another of the filesystem's mounts answers, so this is not debug noise.
                Err(error) => {
                    tracing::warn!(mount = %point.display(), %error, "exec check: mount point unreadable; trying the filesystem's other mounts");
                    false
                }
            })
            .map(|(_, point)| point.as_path())
    }
}

/// The filesystems (by device) mounted somewhere without `noexec` that are not pseudo
/// filesystems, in mount table order.
pub fn exec_filesystems_in(mounts: &[Mount]) -> Vec<ExecFilesystem> {
    let mut out: Vec<ExecFilesystem> = Vec::new();
    // Devices some mount shows without `noexec`.
    let mut exec_devs = std::collections::BTreeSet::new();
    for m in mounts {
        if !m.has_option("noexec") {
            exec_devs.insert(m.kernel_dev());
        }
        if NO_EXEC_FSTYPES.contains(&m.fstype.as_str()) {
            continue;
        }
        let mount = (m.id, m.mount_point.clone());
        match out.iter_mut().find(|f| f.dev == m.kernel_dev()) {
            Some(fs) => fs.mounts.push(mount),
            None => out.push(ExecFilesystem {
                dev: m.kernel_dev(),
                mounts: vec![mount],
            }),
        }
    }
    out.retain(|fs| exec_devs.contains(&fs.dev));
    out
}

/// [`exec_filesystems_in`] of this process's mount table.
pub fn exec_filesystems() -> Result<Vec<ExecFilesystem>, MountinfoError> {
    Ok(exec_filesystems_in(&mountinfo::read_self()?))
}

/// The id of the mount path lookup of `path` ends on (no automount triggered, nothing
/// opened); `Ok(None)` when the kernel gives no mount id.
fn mount_id_at(path: &Path) -> std::io::Result<Option<u64>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let stx = crate::mountinfo::statx(
        libc::AT_FDCWD,
        &c,
        libc::AT_NO_AUTOMOUNT | libc::AT_STATX_DONT_SYNC,
        libc::STATX_MNT_ID,
    )?;
    Ok((stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id))
}

/// The devices (`s_dev`) of the filesystems `group` has a filesystem mark on, from the group's
/// fdinfo (`fanotify sdev:<hex> ...` lines; inode marks start `fanotify ino:`). The kernel's
/// own record: a mark goes with its superblock at unmount, and a device number reused by a
/// new filesystem is not listed. `None` when fdinfo is unreadable.
fn filesystem_marks(group: &File) -> Option<BTreeSet<u32>> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", group.as_raw_fd())).ok()?;
    Some(sb_marks_in(&text))
}

fn sb_marks_in(fdinfo: &str) -> BTreeSet<u32> {
    fdinfo
        .lines()
        .filter_map(|l| l.strip_prefix("fanotify sdev:"))
        .filter_map(|rest| u32::from_str_radix(rest.split(' ').next()?, 16).ok())
        .collect()
}

/// What [`OpenDenier::check_execs`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecMarks {
    /// Executable filesystems now marked.
    pub marked: usize,
    /// Of which marked by this call (0 when nothing was mounted since the last call).
    pub added: usize,
}

/// Counters, for tests and metrics.
#[derive(Debug, Default)]
pub struct DenyStats {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    /// Answered with the timeout default because the reader was late.
    pub defaulted: AtomicU64,
}

/// One deny rule: a marked inode.
struct Rule {
    path: PathBuf,
    key: (u64, u64),
    /// Keeps the inode reachable through `/proc/self/fd/N` so the mark can be removed even
    /// after the file was renamed.
    pin: OwnedFd,
}

#[derive(Default)]
struct Rules {
    by_id: HashMap<String, Rule>,
    /// Rules per inode: one mark however many rules name it.
    marked: HashMap<(u64, u64), usize>,
    next: u64,
}

/// An event read from the queue and not answered yet.
struct Pending {
    since: Instant,
    pid: i32,
    /// The event's fd; kept open (by whoever holds a clone) until the answer is written, so
    /// its number cannot be reused meanwhile.
    file: Arc<File>,
}

struct Shared {
    group: File,
    settings: DenySettings,
    own_pid: i32,
    rules: Mutex<Rules>,
    pending: Mutex<HashMap<RawFd, Pending>>,
    stop: AtomicBool,
    epoch: Instant,
    /// Nanoseconds since `epoch` (+1) when the reader started its current piece of work; 0
    /// while it waits in poll. The watchdog rescues the queue when this is older than the
    /// deadline.
    busy_since: AtomicU64,
    stall: Mutex<Option<(StallPoint, Instant)>>,
    stats: DenyStats,
    /// Set while exec content checks are on (filesystem marks in place).
    exec_check: Mutex<Option<Arc<dyn ExecCheck>>>,
    /// Held while filesystem marks are added or flushed.
    marking: Mutex<()>,
    /// Slow exec checks, for the exec-check threads.
    exec_jobs: (
        crossbeam_channel::Sender<ExecJob>,
        crossbeam_channel::Receiver<ExecJob>,
    ),
}

/// The fanotify group, its reader and watchdog threads, and the deny rules.
pub struct OpenDenier {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

const MASK: u64 = libc::FAN_OPEN_PERM | libc::FAN_OPEN_EXEC_PERM;
/// `struct fanotify_event_metadata` is 24 bytes: event_len u32, vers u8, reserved u8,
/// metadata_len u16, mask u64, fd i32, pid i32.
const METADATA_LEN: usize = 24;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder leaves consistent data (plain inserts/removes): keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl OpenDenier {
    /// Creates the fanotify group and starts the reader and watchdog threads.
    pub fn start(settings: DenySettings) -> Result<OpenDenier, DenyError> {
        #[expect(unsafe_code, reason = "fanotify_init has no safe wrapper")]
        // SAFETY: plain syscall with constant flags; the result is checked before use.
        let fd = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
                (libc::O_RDONLY | libc::O_LARGEFILE) as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(DenyError::Init {
                source: std::io::Error::last_os_error(),
            });
        }
        #[expect(
            unsafe_code,
            reason = "taking ownership of the fd fanotify_init returned"
        )]
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let group = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        tracing::info!(
            timeout_ms = settings.response_timeout.as_millis() as u64,
            on_timeout = ?settings.on_timeout,
            "deny-open: using fanotify permission events (BPF LSM not used)"
        );
        let shared = Arc::new(Shared {
            group,
            settings,
            own_pid: std::process::id() as i32,
            rules: Mutex::new(Rules::default()),
            pending: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
            busy_since: AtomicU64::new(0),
            stall: Mutex::new(None),
            stats: DenyStats::default(),
            exec_check: Mutex::new(None),
            marking: Mutex::new(()),
            exec_jobs: crossbeam_channel::bounded(EXEC_CHECK_QUEUE),
        });
        let mut threads = Vec::new();
        let roles = [
            ("palisade-fanotify", reader as fn(&Shared)),
            ("palisade-fanotify-watchdog", watchdog as fn(&Shared)),
        ]
        .into_iter()
        .chain(std::iter::repeat_n(
            ("palisade-exec-check", exec_checker as fn(&Shared)),
            EXEC_CHECKERS,
        ));
        for (name, f) in roles {
            let s = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || f(&s));
            match spawned {
                Ok(t) => threads.push(t),
                Err(source) => {
                    let denier = OpenDenier { shared, threads };
                    drop(denier);
                    return Err(DenyError::Thread { name, source });
                }
            }
        }
        Ok(OpenDenier { shared, threads })
    }

    /// Denies opens and execs of the file at `path` (a regular file) by every process but the
    /// daemon. Returns the rule id for [`OpenDenier::allow`].
    pub fn deny(&self, path: &Path) -> Result<String, DenyError> {
        let target = |reason: String| DenyError::Target {
            path: path.to_owned(),
            reason,
        };
        if !path.is_absolute() {
            return Err(target("an absolute path expected".into()));
        }
        // O_PATH: pins the inode without opening it (and without a permission event). A mark
        // follows the inode, so a user's symlink must not choose it (`/tmp/x -> libc.so.6`
        // would stop every new process): only root-owned links are followed.
        let opened = match safe_path::open(path) {
            Ok(opened) => opened,
            Err(e) => {
                e.warn_if_untrusted("deny-open", "refused");
                return Err(target(e.to_string()));
            }
        };
        let meta = opened.metadata().map_err(|e| target(e.to_string()))?;
        if !meta.is_file() {
            return Err(target("not a regular file".into()));
        }
        let key = (meta.dev(), meta.ino());
        if std::fs::metadata("/proc/self/exe").is_ok_and(|m| (m.dev(), m.ino()) == key) {
            return Err(target("the daemon's own executable is never denied".into()));
        }
        let pin = opened.fd;
        let mut rules = lock(&self.shared.rules);
        let count = rules.marked.get(&key).copied().unwrap_or(0);
        if count == 0 {
            mark(&self.shared.group, libc::FAN_MARK_ADD, &pin).map_err(|source| {
                DenyError::Mark {
                    path: path.to_owned(),
                    source,
                }
            })?;
        }
        rules.marked.insert(key, count + 1);
        rules.next += 1;
        let id = format!("fan-{}", rules.next);
        rules.by_id.insert(
            id.clone(),
            Rule {
                path: path.to_owned(),
                key,
                pin,
            },
        );
        tracing::info!(rule = %id, path = %path.display(), dev = key.0, ino = key.1, "deny-open: rule added");
        Ok(id)
    }

    /// Removes rule `id`; the file opens again once no rule names its inode.
    pub fn allow(&self, id: &str) -> Result<(), DenyError> {
        let mut rules = lock(&self.shared.rules);
        let rule = rules
            .by_id
            .remove(id)
            .ok_or_else(|| DenyError::NoRule { id: id.into() })?;
        let count = rules.marked.get(&rule.key).copied().unwrap_or(1);
        if count <= 1 {
            rules.marked.remove(&rule.key);
            if let Err(source) = mark(&self.shared.group, libc::FAN_MARK_REMOVE, &rule.pin) {
                // Put the rule back: it is still in force.
                rules.marked.insert(rule.key, count);
                let path = rule.path.clone();
                rules.by_id.insert(id.to_owned(), rule);
                return Err(DenyError::Mark { path, source });
            }
        } else {
            rules.marked.insert(rule.key, count - 1);
        }
        tracing::info!(rule = %id, path = %rule.path.display(), "deny-open: rule removed");
        Ok(())
    }

    /// (rule id, path) of every rule, sorted by id.
    pub fn rules(&self) -> Vec<(String, PathBuf)> {
        let rules = lock(&self.shared.rules);
        let mut out: Vec<_> = rules
            .by_id
            .iter()
            .map(|(id, r)| (id.clone(), r.path.clone()))
            .collect();
        out.sort();
        out
    }

    pub fn settings(&self) -> DenySettings {
        self.shared.settings
    }

    /// Starts (or re-targets) exec content checks: marks every filesystem of
    /// [`exec_filesystems`] for `FAN_OPEN_EXEC_PERM` and asks `check` about every exec of a file
    /// no deny rule names. Calling it again marks only filesystems not marked yet (mounted
    /// since): the marks in place are read from the kernel, so repeated calls make no
    /// `fanotify_mark` call while the filesystem set is unchanged. One that cannot be marked is
    /// logged and skipped; none marked at all is an error.
    pub fn check_execs(&self, check: Arc<dyn ExecCheck>) -> Result<ExecMarks, DenyError> {
        let filesystems = exec_filesystems().map_err(|source| DenyError::Mounts { source })?;
        // One caller at a time between reading the marks and adding the missing ones.
        let _marking = lock(&self.shared.marking);
        *lock(&self.shared.exec_check) = Some(check);
        let before = filesystem_marks(&self.shared.group);
        let mut marks = ExecMarks {
            marked: 0,
            added: 0,
        };
        let mut last = None;
        for fs in filesystems {
            if before.as_ref().is_some_and(|m| m.contains(&fs.dev)) {
                marks.marked += 1;
                continue;
            }
            let Some(point) = fs.reachable_mount_point() else {
                tracing::debug!(
                    dev = fs.dev,
                    mounts = fs.mounts.len(),
                    "exec check: filesystem mounted over everywhere; not marked"
                );
                continue;
            };
            match mark_filesystem(&self.shared.group, libc::FAN_MARK_ADD, point) {
                Ok(()) => {
                    marks.marked += 1;
                    marks.added += 1;
                }
                Err(source) => {
                    tracing::warn!(mount = %point.display(), %source, "exec check: filesystem not marked; execs there are not content-checked");
                    last = Some(DenyError::Mark {
                        path: point.to_path_buf(),
                        source,
                    });
                }
            }
        }
        if marks.marked == 0 {
            *lock(&self.shared.exec_check) = None;
            return Err(last.unwrap_or_else(|| DenyError::Target {
                path: PathBuf::from(crate::mountinfo::SELF_MOUNTINFO),
                reason: "no executable filesystem found".into(),
            }));
        }
        if marks.added > 0 {
            tracing::info!(
                filesystems = marks.marked,
                added = marks.added,
                "exec check: every exec on these filesystems waits for the daemon's verdict"
            );
        }
        Ok(marks)
    }

    /// Stops exec content checks: removes every filesystem mark.
    pub fn stop_exec_checks(&self) -> Result<(), DenyError> {
        let _marking = lock(&self.shared.marking);
        *lock(&self.shared.exec_check) = None;
        #[expect(unsafe_code, reason = "fanotify_mark has no safe wrapper")]
        // SAFETY: flushing this group's filesystem marks; no pointer is passed.
        let rc = unsafe {
            libc::fanotify_mark(
                self.shared.group.as_raw_fd(),
                libc::FAN_MARK_FLUSH | libc::FAN_MARK_FILESYSTEM,
                0,
                libc::AT_FDCWD,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            return Err(DenyError::Mark {
                path: PathBuf::from("(all filesystems)"),
                source: std::io::Error::last_os_error(),
            });
        }
        tracing::info!("exec check: filesystem marks removed");
        Ok(())
    }

    /// Whether exec content checks are on.
    pub fn checks_execs(&self) -> bool {
        lock(&self.shared.exec_check).is_some()
    }

    pub fn stats(&self) -> &DenyStats {
        &self.shared.stats
    }

    /// Test hook: makes the reader thread stop at `point` for `duration`, as a wedged daemon
    /// would, so tests can show the deadline default applies instead of a hang.
    pub fn stall(&self, point: StallPoint, duration: Duration) {
        *lock(&self.shared.stall) = Some((point, Instant::now() + duration));
    }
}

impl Drop for OpenDenier {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        *lock(&self.shared.stall) = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Events read but unanswered get the default now; the group fd closes with the last
        // Arc, and the kernel allows whatever is still queued.
        let left: Vec<_> = lock(&self.shared.pending).drain().collect();
        for (fd, p) in left {
            let d = self.shared.default_for(p.pid);
            self.shared.respond(fd, d);
        }
    }
}

/// FAN_MARK_ADD / FAN_MARK_REMOVE of the inode `pin` refers to, through its /proc magic link
/// (works after a rename; an O_PATH fd cannot be passed as the dirfd itself).
fn mark(group: &File, op: libc::c_uint, pin: &OwnedFd) -> std::io::Result<()> {
    let link = std::ffi::CString::new(format!("/proc/self/fd/{}", pin.as_raw_fd()))
        .map_err(std::io::Error::other)?;
    #[expect(unsafe_code, reason = "fanotify_mark has no safe wrapper")]
    // SAFETY: `group` is an open fanotify fd and `link` a NUL-terminated string that outlives
    // the call.
    let rc =
        unsafe { libc::fanotify_mark(group.as_raw_fd(), op, MASK, libc::AT_FDCWD, link.as_ptr()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// FAN_MARK_ADD / FAN_MARK_REMOVE of the filesystem mounted at `mount`, for exec only.
fn mark_filesystem(group: &File, op: libc::c_uint, mount: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path =
        std::ffi::CString::new(mount.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    #[expect(unsafe_code, reason = "fanotify_mark has no safe wrapper")]
    // SAFETY: `group` is an open fanotify fd and `path` a NUL-terminated string that outlives
    // the call.
    let rc = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            op | libc::FAN_MARK_FILESYSTEM,
            libc::FAN_OPEN_EXEC_PERM,
            libc::AT_FDCWD,
            path.as_ptr(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX) + 1
    }

    fn default_for(&self, pid: i32) -> bool {
        pid == self.own_pid || self.settings.on_timeout == TimeoutDefault::Allow
    }

    /// Writes the answer for event `fd` (true = allow). Never blocks for long: the group fd
    /// is non-blocking and responses are 8 bytes.
    fn respond(&self, fd: RawFd, allow: bool) {
        let response = if allow {
            libc::FAN_ALLOW
        } else {
            libc::FAN_DENY
        };
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&fd.to_ne_bytes());
        buf[4..].copy_from_slice(&response.to_ne_bytes());
        if let Err(error) = (&self.group).write_all(&buf) {
            tracing::error!(fd, %error, "deny-open: cannot answer a permission event");
        }
    }

    /// Reads what is queued (non-blocking). Events without an fd (queue overflow) are counted
    /// and dropped: permission events are never merged away, so nothing waits on them.
    fn read_events(&self, buf: &mut [u8]) -> Vec<(RawFd, i32, u64, Arc<File>)> {
        let n = match (&self.group).read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Vec::new(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Vec::new(),
            Err(error) => {
                tracing::error!(%error, "deny-open: reading fanotify events failed");
                std::thread::sleep(Duration::from_millis(10));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        let mut off = 0;
        while off + METADATA_LEN <= n {
            let b = &buf[off..off + METADATA_LEN];
            let event_len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let vers = b[4];
            let mask = u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
            let fd = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
            let pid = i32::from_ne_bytes([b[20], b[21], b[22], b[23]]);
            if vers != libc::FANOTIFY_METADATA_VERSION || event_len < METADATA_LEN {
                tracing::error!(vers, event_len, "deny-open: unexpected fanotify metadata");
                break;
            }
            off += event_len;
            if fd < 0 {
                tracing::warn!("deny-open: fanotify queue overflow");
                continue;
            }
            #[expect(
                unsafe_code,
                reason = "taking ownership of the fd a fanotify event carries"
            )]
            // SAFETY: the kernel installed `fd` in our table for this event; nobody else owns it.
            let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            out.push((fd, pid, mask, Arc::new(file)));
        }
        out
    }

    /// The reader's answer: deny when the opener is not the daemon and the inode is ruled, or,
    /// for an exec while content checks are on, when the [`ExecCheck`] says so (at once when
    /// it knows; otherwise the exec goes to an exec-check thread).
    fn decide(&self, pid: i32, mask: u64, file: &File) -> Decision {
        if pid == self.own_pid {
            return Decision::Answer(true);
        }
        let Ok(meta) = file.metadata() else {
            return Decision::Answer(self.default_for(pid));
        };
        let denied = lock(&self.rules)
            .marked
            .contains_key(&(meta.dev(), meta.ino()));
        if denied {
            let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .unwrap_or_default();
            // Debug, not warn: a denied process retrying in a loop must not flood the log.
            tracing::debug!(pid, path = %path.display(), "deny-open: denied");
            return Decision::Answer(false);
        }
        if mask & libc::FAN_OPEN_EXEC_PERM != 0 {
            let check = lock(&self.exec_check).clone();
            if let Some(check) = check {
                return match check.known_verdict(pid, &meta) {
                    Some(allow) => Decision::Answer(allow),
                    None => Decision::Check(check, meta),
                };
            }
        }
        Decision::Answer(true)
    }

    /// Answers event `fd`, already taken out of `pending`, with the timeout default `allow`,
    /// counted before the answer so the count is visible once the opener returns.
    fn answer_default(&self, fd: RawFd, allow: bool) {
        self.stats.defaulted.fetch_add(1, Ordering::Relaxed);
        self.respond(fd, allow);
    }

    /// Answers event `fd` unless the watchdog did already.
    fn answer(&self, fd: RawFd, allow: bool) {
        if lock(&self.pending).remove(&fd).is_some() {
            self.count(allow);
            self.respond(fd, allow);
        }
    }

    /// Sleeps while a stall at `point` is in force (test hook).
    fn stall_at(&self, point: StallPoint) {
        loop {
            let until = match *lock(&self.stall) {
                Some((p, until)) if p == point && Instant::now() < until => until,
                _ => return,
            };
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(10)),
            );
        }
    }

    fn count(&self, allow: bool) {
        let c = if allow {
            &self.stats.allowed
        } else {
            &self.stats.denied
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Poll for readability, at most `timeout_ms`.
fn poll_readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    #[expect(unsafe_code, reason = "poll has no safe wrapper in std")]
    // SAFETY: one valid pollfd on the stack, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    rc > 0 && (pfd.revents & libc::POLLIN) != 0
}

fn reader(s: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    while !s.stop.load(Ordering::SeqCst) {
        s.busy_since.store(0, Ordering::SeqCst);
        if !poll_readable(s.group.as_raw_fd(), 100) {
            continue;
        }
        s.busy_since.store(s.now_ns(), Ordering::SeqCst);
        s.stall_at(StallPoint::BeforeRead);
        let events = s.read_events(&mut buf);
        if events.is_empty() {
            continue;
        }
        {
            let now = Instant::now();
            let mut pending = lock(&s.pending);
            for (fd, pid, _mask, file) in &events {
                pending.insert(
                    *fd,
                    Pending {
                        since: now,
                        pid: *pid,
                        file: Arc::clone(file),
                    },
                );
            }
        }
        s.stall_at(StallPoint::BeforeAnswer);
        for (fd, pid, mask, file) in events {
            match s.decide(pid, mask, &file) {
                Decision::Answer(allow) => s.answer(fd, allow),
                Decision::Check(check, meta) => {
                    let job = ExecJob {
                        fd,
                        pid,
                        file,
                        meta,
                        check,
                    };
                    if let Err(full) = s.exec_jobs.0.try_send(job) {
                        let job = full.into_inner();
                        let allow = s.default_for(job.pid);
                        tracing::warn!(
                            pid = job.pid,
                            allow,
                            "exec check: every checker busy, answered with the timeout default"
                        );
                        if lock(&s.pending).remove(&job.fd).is_some() {
                            s.answer_default(job.fd, allow);
                        }
                    }
                }
            }
        }
    }
}

/// What the reader does with an event.
enum Decision {
    Answer(bool),
    /// Left to an exec-check thread.
    Check(Arc<dyn ExecCheck>, std::fs::Metadata),
}

/// Runs slow exec checks and answers them (unless the watchdog answered first, after the
/// deadline).
fn exec_checker(s: &Shared) {
    while !s.stop.load(Ordering::SeqCst) {
        let job = match s.exec_jobs.1.recv_timeout(Duration::from_millis(100)) {
            Ok(job) => job,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        // Answered by the watchdog while queued: do not spend a hash on it (the job's file
        // keeps the fd number from being reused, so the lookup names this event).
        if !lock(&s.pending).contains_key(&job.fd) {
            continue;
        }
        let allow = job.check.allow_exec(job.pid, &job.file, &job.meta);
        s.answer(job.fd, allow);
    }
}

fn watchdog(s: &Shared) {
    let deadline = s.settings.response_timeout;
    let tick = (deadline / 5).clamp(Duration::from_millis(1), Duration::from_millis(50));
    let deadline_ns = u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX);
    let mut buf = vec![0u8; 64 * 1024];
    while !s.stop.load(Ordering::SeqCst) {
        std::thread::sleep(tick);
        // Events the reader read but did not answer in time.
        let expired: Vec<(RawFd, Pending)> = {
            let mut pending = lock(&s.pending);
            let late: Vec<RawFd> = pending
                .iter()
                .filter(|(_, p)| p.since.elapsed() >= deadline)
                .map(|(fd, _)| *fd)
                .collect();
            late.into_iter()
                .filter_map(|fd| pending.remove(&fd).map(|p| (fd, p)))
                .collect()
        };
        for (fd, p) in expired {
            let allow = s.default_for(p.pid);
            tracing::warn!(
                pid = p.pid,
                allow,
                "deny-open: reader late, answered with the timeout default"
            );
            s.answer_default(fd, allow);
            drop(p.file);
        }
        // A reader wedged before reading: drain the queue with the default.
        let busy = s.busy_since.load(Ordering::SeqCst);
        if busy != 0 && s.now_ns().saturating_sub(busy) >= deadline_ns {
            for (fd, pid, _mask, file) in s.read_events(&mut buf) {
                let allow = s.default_for(pid);
                tracing::warn!(
                    pid,
                    allow,
                    "deny-open: reader stalled, answered with the timeout default"
                );
                s.answer_default(fd, allow);
                drop(file);
            }
        }
    }
}

/// The `deny-open` [`Actuator`]: each request adds a rule, release removes it.
pub struct DenyOpenActuator {
    denier: Arc<OpenDenier>,
}

impl DenyOpenActuator {
    pub fn new(denier: Arc<OpenDenier>) -> DenyOpenActuator {
        DenyOpenActuator { denier }
    }

    pub fn denier(&self) -> &Arc<OpenDenier> {
        &self.denier
    }
}

impl Actuator for DenyOpenActuator {
    fn execute(&self, _ctx: &ExecContext<'_>, req: &ActionRequest) -> Result<Outcome, ActionError> {
        let ActionRequest::DenyOpen { path } = req else {
            return Err(ActionError::Failed(format!(
                "deny-open actuator got a {} request",
                req.name()
            )));
        };
        match self.denier.deny(Path::new(path)) {
            Ok(id) => Ok(Outcome::Held { handle: id }),
            Err(e @ DenyError::Target { .. }) => Err(ActionError::InvalidTarget(e.to_string())),
            Err(e) => Err(ActionError::Failed(e.to_string())),
        }
    }

    fn release(&self, action: &ActiveAction) -> Result<(), ActionError> {
        self.denier.allow(&action.handle).map_err(|e| match e {
            DenyError::NoRule { .. } => ActionError::InvalidTarget(e.to_string()),
            other => ActionError::Failed(other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_filesystems_skip_pseudo_and_noexec_only_filesystems() {
        let mounts = crate::mountinfo::parse(
            "\
1 0 8:1 / / rw shared:1 - ext4 /dev/sda1 rw
2 1 0:5 / /proc rw - proc proc rw
3 1 0:30 / /dev/shm rw,nosuid,noexec - tmpfs tmpfs rw
4 1 8:1 /srv /srv\\040data rw - ext4 /dev/sda1 rw
5 1 0:31 / /mnt/a\\040b rw,noexec - tmpfs tmpfs rw
6 1 0:31 / /mnt/c rw - tmpfs tmpfs rw
",
        )
        .unwrap();
        let found = exec_filesystems_in(&mounts);
        let kdev = palisade_common::kernel::kernel_dev;
        assert_eq!(
            found,
            vec![
                ExecFilesystem {
                    dev: kdev(8, 1),
                    mounts: vec![(1, "/".into()), (4, "/srv data".into())],
                },
                // Mounted noexec once and exec once: checked, markable through either.
                ExecFilesystem {
                    dev: kdev(0, 31),
                    mounts: vec![(5, "/mnt/a b".into()), (6, "/mnt/c".into())],
                },
            ]
        );
        let here = exec_filesystems().unwrap();
        let root = here
            .iter()
            .find(|f| f.mounts.iter().any(|(_, p)| p == Path::new("/")))
            .unwrap_or_else(|| panic!("{here:?}"));
        assert_eq!(root.reachable_mount_point(), Some(Path::new("/")));
        assert!(
            !here
                .iter()
                .any(|f| f.mounts.iter().any(|(_, p)| p == Path::new("/proc"))),
            "{here:?}"
        );
    }

    /// A filesystem mounted over is not reachable through its mount point (marking there would
    /// mark the one on top).
    #[test]
    fn a_mounted_over_filesystem_is_not_marked_through_its_mount_point() {
        let here = crate::mountinfo::read_self().unwrap();
        let root = here
            .iter()
            .find(|m| m.mount_point == Path::new("/"))
            .unwrap();
        let under = ExecFilesystem {
            dev: 1,
            // A mount id that is not the root's: what an overmounted `/` looks like.
            mounts: vec![(root.id + 100_000, "/".into())],
        };
        assert_eq!(under.reachable_mount_point(), None);
        let top = ExecFilesystem {
            dev: root.kernel_dev(),
            mounts: vec![(root.id + 100_000, "/".into()), (root.id, "/".into())],
        };
        assert_eq!(top.reachable_mount_point(), Some(Path::new("/")));
    }

    #[test]
    fn fdinfo_lists_filesystem_marks_only() {
        let fdinfo = "pos:\t0\nflags:\t02004000\nmnt_id:\t15\nino:\t1057\n\
fanotify flags:10 event-flags:8000\n\
fanotify ino:2a sdev:800001 mflags:0 mask:10100 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:2a000000\n\
fanotify sdev:800001 mflags:0 mask:100000 ignored_mask:0\n\
fanotify sdev:1f mflags:0 mask:100000 ignored_mask:0\n";
        assert_eq!(sb_marks_in(fdinfo), BTreeSet::from([0x80_0001, 0x1f]));
    }

    struct AllowAll;
    impl ExecCheck for AllowAll {
        fn allow_exec(&self, _pid: i32, _file: &File, _meta: &std::fs::Metadata) -> bool {
            true
        }
    }

    /// Root only: marks every executable filesystem (each exec on the host waits for this
    /// group's reader, which allows it, until the marks are flushed).
    #[test]
    fn exec_marks_are_added_once() {
        // SAFETY: geteuid has no preconditions.
        #[expect(unsafe_code, reason = "geteuid has no safe wrapper in std")]
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            eprintln!("SKIPPED (needs root): exec_marks_are_added_once");
            return;
        }
        let denier = OpenDenier::start(DenySettings::default()).unwrap();
        let first = denier.check_execs(Arc::new(AllowAll)).unwrap();
        assert!(first.marked > 0 && first.added == first.marked, "{first:?}");
        let marks = filesystem_marks(&denier.shared.group).unwrap();
        assert_eq!(marks.len(), first.marked, "{marks:?}");
        let again = denier.check_execs(Arc::new(AllowAll)).unwrap();
        assert_eq!(
            again,
            ExecMarks {
                marked: first.marked,
                added: 0
            }
        );
        // An exec still runs (the reader answers it).
        assert!(std::process::Command::new("/bin/true")
            .status()
            .unwrap()
            .success());
        denier.stop_exec_checks().unwrap();
        assert!(filesystem_marks(&denier.shared.group).unwrap().is_empty());
        assert!(!denier.checks_execs());
        let restarted = denier.check_execs(Arc::new(AllowAll)).unwrap();
        assert_eq!(restarted.added, restarted.marked);
        denier.stop_exec_checks().unwrap();
    }
}
