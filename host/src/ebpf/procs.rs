//! Userspace process cache for the eBPF source: pid -> [`Process`] (exe, args, cwd, ppid,
//! uids, start time, ancestors), seeded from /proc at start and maintained from the fork, exec
//! and exit events themselves, so short-lived processes are described even after they are gone
//! from /proc. Bounded: exited processes are evicted at their exit event, and past `capacity`
//! new entries are not stored (events still carry what their record says). It must not block
//! on anything but small /proc reads, and it only reads /proc for a pid it has never seen (or
//! once per fd-dup event, to name the duplicated descriptor).

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;

use super::decode::Clock;
use crate::event::{Ancestor, Event, EventData, FdTargetKind, Process};

/// Ancestors kept per process (nearest first).
pub const MAX_ANCESTORS: usize = 8;
/// Default cap on cached processes.
pub const DEFAULT_CAPACITY: usize = 65_536;
/// Linux USER_HZ: /proc/<pid>/stat times are in these ticks on every mainstream architecture.
const TICKS_PER_SEC: u64 = 100;

/// The cache. Owned by the reader thread; no locking.
#[derive(Debug)]
pub struct ProcessCache {
    procs: HashMap<u32, Arc<Process>>,
    capacity: usize,
    /// Where /proc lives.
    proc_root: String,
    /// Turns event wall-clock time back into ns since boot for `start_ns`.
    clock: Clock,
}

impl ProcessCache {
    pub fn new(capacity: usize) -> Self {
        ProcessCache {
            procs: HashMap::new(),
            capacity,
            proc_root: "/proc".to_owned(),
            clock: Clock::default(),
        }
    }

    /// A cache filled with every process currently in /proc, ancestors linked.
    pub fn seeded(capacity: usize) -> Self {
        let mut cache = ProcessCache::new(capacity);
        cache.seed();
        cache
    }

    /// Sets the clock the source stamps events with.
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn get(&self, pid: u32) -> Option<&Arc<Process>> {
        self.procs.get(&pid)
    }

    fn seed(&mut self) {
        let Ok(dir) = fs::read_dir(&self.proc_root) else {
            return;
        };
        for entry in dir.flatten() {
            if self.procs.len() >= self.capacity {
                break;
            }
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(p) = read_proc(&self.proc_root, pid) {
                self.procs.insert(pid, Arc::new(p));
            }
        }
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            let ancestors = self.ancestors_of(self.procs.get(&pid).map_or(0, |p| p.ppid));
            if let Some(p) = self.procs.get_mut(&pid) {
                Arc::make_mut(p).ancestors = ancestors;
            }
        }
    }

    /// Ancestor chain starting at `ppid`, from the cache only.
    fn ancestors_of(&self, mut ppid: u32) -> Vec<Ancestor> {
        let mut out = Vec::new();
        while ppid != 0 && out.len() < MAX_ANCESTORS {
            let Some(p) = self.procs.get(&ppid) else {
                out.push(Ancestor {
                    pid: ppid,
                    ..Ancestor::default()
                });
                break;
            };
            out.push(Ancestor {
                pid: p.pid,
                comm: p.comm.clone(),
                exe: p.exe.clone(),
            });
            if p.ppid == ppid {
                break;
            }
            ppid = p.ppid;
        }
        out
    }

    fn insert(&mut self, p: Arc<Process>) {
        if self.procs.len() < self.capacity || self.procs.contains_key(&p.pid) {
            self.procs.insert(p.pid, p);
        }
    }

    /// The cached entry for `pid`, loading it from /proc the first time; `None` when the
    /// process is gone and was never seen.
    fn lookup(&mut self, pid: u32) -> Option<Arc<Process>> {
        if let Some(p) = self.procs.get(&pid) {
            return Some(p.clone());
        }
        let mut p = read_proc(&self.proc_root, pid)?;
        p.ancestors = self.ancestors_of(p.ppid);
        let p = Arc::new(p);
        self.insert(p.clone());
        Some(p)
    }

    /// Replaces `event.process` (which holds only what the kernel record carried) with the
    /// cached process context, and updates the cache from fork/exec/exit.
    pub fn enrich(&mut self, event: &mut Event) {
        let rec = event.process.clone();
        let cached = self.lookup(rec.pid);
        match &event.data {
            EventData::Fork { child_pid } => {
                if let Some(parent) = &cached {
                    let mut ancestors = Vec::with_capacity(MAX_ANCESTORS);
                    ancestors.push(Ancestor {
                        pid: parent.pid,
                        comm: parent.comm.clone(),
                        exe: parent.exe.clone(),
                    });
                    ancestors.extend(parent.ancestors.iter().take(MAX_ANCESTORS - 1).cloned());
                    let child = Process {
                        pid: *child_pid,
                        tid: *child_pid,
                        ppid: parent.pid,
                        start_ns: self.clock.to_boot_ns(event.ts_ns),
                        ancestors,
                        ..(**parent).clone()
                    };
                    self.insert(Arc::new(child));
                }
            }
            EventData::Exec(exec) => {
                let base = cached.as_deref().cloned().unwrap_or_else(|| Process {
                    pid: rec.pid,
                    ..Process::default()
                });
                let updated = Process {
                    tid: rec.pid,
                    uid: rec.uid,
                    gid: rec.gid,
                    comm: rec.comm.clone(),
                    exe: exec.filename.clone(),
                    args: exec.args.clone(),
                    cgroup_id: rec.cgroup_id,
                    ..base
                };
                let updated = Arc::new(updated);
                self.insert(updated.clone());
                event.process = with_thread(&updated, &rec);
                return;
            }
            EventData::FdDup { newfd, oldfd, .. } => {
                // The record is emitted at syscall entry and may be read before the dup happens:
                // `oldfd` names the target both before and after (until the process closes it),
                // `newfd` only after. Racy either way; `Unknown` when neither can be read.
                let kind = fd_target_kind(&self.proc_root, rec.pid, *oldfd)
                    .or_else(|| fd_target_kind(&self.proc_root, rec.pid, *newfd));
                if let (Some(kind), EventData::FdDup { target_kind, .. }) = (kind, &mut event.data)
                {
                    *target_kind = kind;
                }
            }
            EventData::Exit { .. } => {
                self.procs.remove(&rec.pid);
            }
            _ => {}
        }
        if let Some(p) = cached {
            event.process = with_thread(&p, &rec);
        }
    }
}

/// The cached process as seen by the record's thread: shares the `Arc` when nothing differs.
fn with_thread(cached: &Arc<Process>, rec: &Process) -> Arc<Process> {
    if cached.tid == rec.tid
        && cached.uid == rec.uid
        && cached.gid == rec.gid
        && cached.comm == rec.comm
        && cached.cgroup_id == rec.cgroup_id
    {
        return cached.clone();
    }
    // euid is not in the kernel record: keep the cached one unless the real uid changed.
    let euid = if cached.uid == rec.uid {
        cached.euid
    } else {
        rec.uid
    };
    Arc::new(Process {
        tid: rec.tid,
        uid: rec.uid,
        gid: rec.gid,
        euid,
        comm: rec.comm.clone(),
        cgroup_id: rec.cgroup_id,
        ..(**cached).clone()
    })
}

/// Reads one process from `<root>/<pid>`; `None` if it is gone or unreadable.
fn read_proc(root: &str, pid: u32) -> Option<Process> {
    let base = format!("{root}/{pid}");
    let stat = fs::read_to_string(format!("{base}/stat")).ok()?;
    let (comm, ppid, start_ticks) = parse_stat(&stat)?;
    let status = fs::read_to_string(format!("{base}/status")).unwrap_or_default();
    let ids = |key: &str| -> (u32, u32) {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| {
                let mut it = rest
                    .split_whitespace()
                    .filter_map(|v| v.parse::<u32>().ok());
                (it.next().unwrap_or(0), it.next().unwrap_or(0))
            })
            .unwrap_or((0, 0))
    };
    let (uid, euid) = ids("Uid:");
    let (gid, _egid) = ids("Gid:");
    let args = fs::read(format!("{base}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let link = |name: &str| {
        fs::read_link(format!("{base}/{name}"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    Some(Process {
        pid,
        tid: pid,
        ppid,
        uid,
        gid,
        euid,
        comm,
        exe: link("exe"),
        args,
        cwd: link("cwd"),
        cgroup_id: 0,
        container_id: None,
        start_ns: start_ticks.saturating_mul(1_000_000_000 / TICKS_PER_SEC),
        ancestors: Vec::new(),
    })
}

/// `(comm, ppid, starttime ticks)` from /proc/<pid>/stat; comm may contain spaces and parens,
/// so split at the last ')'.
fn parse_stat(stat: &str) -> Option<(String, u32, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // rest[0] = state (field 3), so field n is rest[n - 3].
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((comm, ppid, start))
}

/// What `/proc/<pid>/fd/<fd>` points at. Racy by nature: the descriptor may have been closed or
/// replaced between the syscall and this read; `None` when it cannot be read.
fn fd_target_kind(root: &str, pid: u32, fd: u32) -> Option<FdTargetKind> {
    let target = fs::read_link(format!("{root}/{pid}/fd/{fd}")).ok()?;
    let target = target.to_string_lossy();
    Some(if target.starts_with("socket:") {
        FdTargetKind::Socket
    } else if target.starts_with("pipe:") {
        FdTargetKind::Pipe
    } else if target.starts_with("/dev/pts/") || target.starts_with("/dev/tty") {
        FdTargetKind::Tty
    } else if target.starts_with('/') {
        FdTargetKind::File
    } else {
        FdTargetKind::Unknown
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ExecData;

    fn ev(pid: u32, data: EventData) -> Event {
        Event {
            ts_ns: 0,
            process: Arc::new(Process {
                pid,
                tid: pid,
                comm: "x".into(),
                ..Process::default()
            }),
            data,
        }
    }

    #[test]
    fn parses_stat_with_spaces_in_comm() {
        let stat = "123 (a b) c)) S 45 123 123 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        assert_eq!(parse_stat(stat), Some(("a b) c)".to_owned(), 45, 777)));
    }

    #[test]
    fn seeds_self_and_tracks_fork_exec_exit() {
        let me = std::process::id();
        let mut cache = ProcessCache::seeded(DEFAULT_CAPACITY);
        let mine = cache.get(me).expect("own process seeded").clone();
        assert!(!mine.exe.is_empty());
        assert!(!mine.args.is_empty());
        // A child we can never find in /proc (pid beyond pid_max).
        let child = 4_000_000_001;
        let mut fork = ev(me, EventData::Fork { child_pid: child });
        cache.enrich(&mut fork);
        assert_eq!(fork.process.exe, mine.exe);
        let c = cache.get(child).expect("child cached").clone();
        assert_eq!((c.ppid, c.ancestors[0].pid), (me, me));
        let mut exec = ev(
            child,
            EventData::Exec(ExecData {
                filename: "/bin/true".into(),
                args: vec!["true".into(), "x".into()],
                args_truncated: false,
            }),
        );
        cache.enrich(&mut exec);
        assert_eq!(exec.process.exe, "/bin/true");
        assert_eq!(exec.process.ppid, me);
        assert_eq!(exec.process.args, vec!["true".to_owned(), "x".to_owned()]);
        let mut exit = ev(child, EventData::Exit { code: 0 });
        cache.enrich(&mut exit);
        assert_eq!(exit.process.exe, "/bin/true");
        assert!(cache.get(child).is_none(), "evicted on exit");
    }

    #[test]
    fn capacity_bounds_the_cache() {
        let me = std::process::id();
        let mut cache = ProcessCache::new(2);
        cache.enrich(&mut ev(
            me,
            EventData::Fork {
                child_pid: 4_000_000_001,
            },
        ));
        assert_eq!(
            cache.len(),
            2,
            "self loaded from /proc, child from the fork"
        );
        cache.enrich(&mut ev(
            me,
            EventData::Fork {
                child_pid: 4_000_000_002,
            },
        ));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(4_000_000_002).is_none());
    }
}
