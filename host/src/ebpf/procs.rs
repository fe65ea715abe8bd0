//! Userspace process cache for the eBPF source: pid -> [`Process`] (exe, args, cwd, ppid,
//! uids, start time, ancestors), seeded from /proc at start and maintained from the fork, exec
//! and exit events themselves, so short-lived processes are described even after they are gone
//! from /proc. Bounded: exited processes are evicted at their exit event, and past `capacity`
//! new entries are not stored (events still carry what their record says). It must not block
//! on anything but small /proc reads, and it only reads /proc for a pid it has never seen (or
//! once per fd-dup event, to name the duplicated descriptor).
//!
//! Container ids (`process.container_id`) come from the cgroup path (`event::container`): read
//! from `/proc/<pid>/cgroup` when a process is first loaded from /proc, and otherwise resolved
//! once per cgroup id (the kernel record carries it) and cached, so only a process's first
//! event in a new cgroup (an exec after a move into a container's cgroup) costs a small read.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::decode::Clock;
use crate::event::container;
use crate::event::{Ancestor, Event, EventData, FdTargetKind, Process};

/// Ancestors kept per process (nearest first).
pub const MAX_ANCESTORS: usize = 8;
/// Default cap on cached processes.
pub const DEFAULT_CAPACITY: usize = 65_536;
/// Cgroup ids whose container id is remembered; the map is cleared when it reaches this (a
/// host has far fewer live cgroups, so this only bounds churn).
pub const MAX_CGROUPS: usize = 4096;
/// How deep the cgroup v2 tree is searched for a cgroup id whose process already exited.
const MAX_CGROUP_DEPTH: usize = 12;
/// Directories visited at most by that search.
const MAX_CGROUP_DIRS: usize = 20_000;
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
    /// Cgroup v2 id -> container id (`None`: a host cgroup).
    containers: HashMap<u64, Option<String>>,
    /// Where cgroup v2 is mounted (`None`: not mounted; ids then come from /proc only).
    cgroup2_root: Option<PathBuf>,
    /// Thread views: tid -> (the cached record the view was made from, the view). Events of a
    /// thread other than the one cached (any worker thread of a server) then share one record
    /// instead of allocating one per event, and a plugin batch lists that process once.
    /// Bounded by `capacity` (cleared when full).
    threads: HashMap<u32, (Arc<Process>, Arc<Process>)>,
}

impl ProcessCache {
    pub fn new(capacity: usize) -> Self {
        ProcessCache {
            procs: HashMap::new(),
            capacity,
            proc_root: "/proc".to_owned(),
            clock: Clock::default(),
            containers: HashMap::new(),
            cgroup2_root: container::cgroup2_root(),
            threads: HashMap::new(),
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
            if let Some(p) = self.read_proc(pid) {
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
        let mut p = self.read_proc(pid)?;
        p.ancestors = self.ancestors_of(p.ppid);
        let p = Arc::new(p);
        self.insert(p.clone());
        Some(p)
    }

    /// Replaces `event.process` (which holds only what the kernel record carried) with the
    /// cached process context, and updates the cache from fork/exec/exit.
    pub fn enrich(&mut self, event: &mut Event) {
        let rec = event.process.clone();
        let mut cached = self.lookup(rec.pid);
        // A process seen in a new cgroup (moved, or its id unknown when loaded from /proc):
        // resolve the container once and store it, so its later events share one record.
        if let Some(p) = &cached {
            if rec.cgroup_id != 0 && p.cgroup_id != rec.cgroup_id {
                let container_id = self.container_of(rec.pid, rec.cgroup_id);
                let moved = Arc::new(Process {
                    cgroup_id: rec.cgroup_id,
                    container_id,
                    ..(**p).clone()
                });
                self.insert(moved.clone());
                cached = Some(moved);
            }
        }
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
                    container_id: self.container_of(rec.pid, rec.cgroup_id),
                    cgroup_id: rec.cgroup_id,
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
                event.process = self.thread_view(&updated, &rec);
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
                self.threads.remove(&rec.tid);
            }
            _ => {}
        }
        if let Some(p) = cached {
            event.process = self.thread_view(&p, &rec);
        }
    }

    /// `cached` as seen by the record's thread, reusing the view made for that thread last
    /// time while it still derives from the same cached record and matches.
    fn thread_view(&mut self, cached: &Arc<Process>, rec: &Process) -> Arc<Process> {
        if same_thread(cached, rec) {
            return cached.clone();
        }
        if let Some((base, view)) = self.threads.get(&rec.tid) {
            if Arc::ptr_eq(base, cached) && same_thread(view, rec) {
                return view.clone();
            }
        }
        let view = with_thread(cached, rec);
        if self.threads.len() >= self.capacity {
            self.threads.clear();
        }
        self.threads.insert(rec.tid, (cached.clone(), view.clone()));
        view
    }
}

impl ProcessCache {
    /// Reads one process from /proc, with its cgroup id and container id.
    fn read_proc(&mut self, pid: u32) -> Option<Process> {
        let mut p = read_proc(&self.proc_root, pid)?;
        let cgroups = fs::read_to_string(format!("{}/{pid}/cgroup", self.proc_root));
        if let Ok(text) = cgroups {
            p.container_id = container::container_id_from_cgroup_file(&text).map(str::to_owned);
            let id = self
                .cgroup2_root
                .as_deref()
                .zip(container::v2_path(&text))
                .and_then(|(root, path)| container::cgroup_id(root, path));
            if let Some(id) = id {
                p.cgroup_id = id;
                self.remember(id, p.container_id.clone());
            }
        }
        Some(p)
    }

    /// The container id of cgroup `cgroup_id`, which `pid` was just seen in: cached per cgroup
    /// id; otherwise from `/proc/<pid>/cgroup`, or, when the process is already gone, by finding
    /// the cgroup directory with that id. Unresolvable ids are not cached (a later process in
    /// the same cgroup may still tell).
    fn container_of(&mut self, pid: u32, cgroup_id: u64) -> Option<String> {
        if cgroup_id == 0 {
            return None;
        }
        if let Some(known) = self.containers.get(&cgroup_id) {
            return known.clone();
        }
        let from_proc = fs::read_to_string(format!("{}/{pid}/cgroup", self.proc_root))
            .ok()
            .and_then(|text| {
                // The process may have moved again since the record: trust the file only when
                // its v2 directory is the record's cgroup (or v2 cannot be checked).
                let path = container::v2_path(&text)?;
                let matches = match &self.cgroup2_root {
                    Some(root) => container::cgroup_id(root, path) == Some(cgroup_id),
                    None => true,
                };
                matches.then(|| container::container_id_from_cgroup_file(&text).map(str::to_owned))
            });
        let resolved = from_proc.or_else(|| {
            let root = self.cgroup2_root.as_deref()?;
            let path = find_cgroup(root, cgroup_id)?;
            Some(container::container_id_from_path(&path).map(str::to_owned))
        });
        match resolved {
            Some(id) => {
                self.remember(cgroup_id, id.clone());
                id
            }
            None => None,
        }
    }

    fn remember(&mut self, cgroup_id: u64, container_id: Option<String>) {
        if self.containers.len() >= MAX_CGROUPS {
            self.containers.clear();
        }
        self.containers.insert(cgroup_id, container_id);
    }
}

/// The path (relative to `root`, with a leading '/') of the cgroup directory whose inode is
/// `cgroup_id`: a bounded breadth-first walk, used only for a cgroup first seen in a process that
/// already exited.
fn find_cgroup(root: &Path, cgroup_id: u64) -> Option<String> {
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    if fs::metadata(root).ok()?.ino() == cgroup_id {
        return Some("/".to_owned());
    }
    let mut queue = std::collections::VecDeque::from([(root.to_path_buf(), 0usize)]);
    let mut visited = 0;
    while let Some((dir, depth)) = queue.pop_front() {
        visited += 1;
        if visited > MAX_CGROUP_DIRS {
            return None;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            if entry.ino() == cgroup_id {
                let rel = path.strip_prefix(root).ok()?;
                return Some(format!("/{}", rel.to_string_lossy()));
            }
            if depth + 1 < MAX_CGROUP_DEPTH {
                queue.push_back((path, depth + 1));
            }
        }
    }
    None
}

/// Whether `p` already shows what the kernel record says about its thread.
fn same_thread(p: &Process, rec: &Process) -> bool {
    p.tid == rec.tid
        && p.uid == rec.uid
        && p.gid == rec.gid
        && p.comm == rec.comm
        && p.cgroup_id == rec.cgroup_id
}

/// A new record of the cached process as seen by the record's thread (the caller,
/// `thread_view`, has already checked that the cached one differs).
fn with_thread(cached: &Process, rec: &Process) -> Arc<Process> {
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
        ..cached.clone()
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

    /// Events of a worker thread share one record (so a plugin batch lists the process once)
    /// until the process changes.
    #[test]
    fn events_of_one_thread_share_one_record() {
        let mut cache = ProcessCache::new(DEFAULT_CAPACITY);
        let pid = 4_000_000_002;
        let mut fork = ev(1, EventData::Fork { child_pid: pid });
        cache.procs.insert(
            1,
            Arc::new(Process {
                pid: 1,
                tid: 1,
                ..Process::default()
            }),
        );
        cache.enrich(&mut fork);
        let from_thread = |tid: u32, data: EventData| Event {
            ts_ns: 0,
            process: Arc::new(Process {
                pid,
                tid,
                comm: "worker".into(),
                ..Process::default()
            }),
            data,
        };
        let open = || EventData::FileOpen(crate::event::FileOpenData::default());
        let (mut a, mut b, mut c) = (
            from_thread(pid + 1, open()),
            from_thread(pid + 1, open()),
            from_thread(pid + 2, open()),
        );
        for e in [&mut a, &mut b, &mut c] {
            cache.enrich(e);
        }
        assert!(
            Arc::ptr_eq(&a.process, &b.process),
            "same thread, one record"
        );
        assert_eq!(
            (a.process.tid, a.process.comm.as_str()),
            (pid + 1, "worker")
        );
        assert_eq!(c.process.tid, pid + 2);
        // An exec replaces the cached record: the thread's next view derives from the new one.
        let mut exec = from_thread(
            pid + 1,
            EventData::Exec(ExecData {
                filename: "/bin/new".into(),
                args: vec!["new".into()],
                args_truncated: false,
            }),
        );
        cache.enrich(&mut exec);
        let mut d = from_thread(pid + 1, open());
        cache.enrich(&mut d);
        assert_eq!(d.process.exe, "/bin/new");
        assert!(!Arc::ptr_eq(&a.process, &d.process));
    }

    const CID: &str = "3f4a9c2b1e0d8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a";
    const CID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn ino(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().ino()
    }

    /// A fake /proc with `pid` (parent 1) and, when given, its cgroup file.
    fn fake_proc(root: &Path, pid: u32, cgroup: Option<&str>) {
        let dir = root.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        let stat = format!("{pid} (fake) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0");
        fs::write(dir.join("stat"), stat).unwrap();
        fs::write(dir.join("cmdline"), b"fake\0").unwrap();
        if let Some(text) = cgroup {
            fs::write(dir.join("cgroup"), text).unwrap();
        }
    }

    /// A cache over a fake /proc and a fake cgroup v2 tree with a containerd and a docker
    /// container: (cache, proc root, cgroup root, containerd cgroup id, docker cgroup id).
    fn fake_cache() -> (ProcessCache, tempfile::TempDir, tempfile::TempDir, u64, u64) {
        let procs = tempfile::tempdir().unwrap();
        let cgroups = tempfile::tempdir().unwrap();
        let containerd = cgroups
            .path()
            .join(format!("k.slice/cri-containerd-{CID}.scope"));
        let docker = cgroups
            .path()
            .join(format!("system.slice/docker-{CID2}.scope"));
        fs::create_dir_all(&containerd).unwrap();
        fs::create_dir_all(&docker).unwrap();
        let mut cache = ProcessCache::new(DEFAULT_CAPACITY);
        cache.proc_root = procs.path().to_str().unwrap().to_owned();
        cache.cgroup2_root = Some(cgroups.path().to_path_buf());
        let (a, b) = (ino(&containerd), ino(&docker));
        (cache, procs, cgroups, a, b)
    }

    fn in_cgroup(mut event: Event, cgroup_id: u64) -> Event {
        Arc::make_mut(&mut event.process).cgroup_id = cgroup_id;
        event
    }

    #[test]
    fn container_id_from_proc_then_cached_per_cgroup_id() {
        let (mut cache, procs, _cg, containerd, _) = fake_cache();
        let file = format!("4:memory:/\n0::/k.slice/cri-containerd-{CID}.scope\n");
        fake_proc(procs.path(), 4242, Some(&file));
        let mut e = in_cgroup(ev(4242, EventData::Exit { code: 0 }), containerd);
        cache.enrich(&mut e);
        assert_eq!(e.process.container_id.as_deref(), Some(CID));
        assert_eq!(e.process.cgroup_id, containerd);
        // Another process in the same cgroup whose cgroup file cannot be read: the cgroup id
        // alone names the container, from the cache.
        fake_proc(procs.path(), 4243, None);
        let mut e = in_cgroup(ev(4243, EventData::Fork { child_pid: 4244 }), containerd);
        cache.enrich(&mut e);
        assert_eq!(e.process.container_id.as_deref(), Some(CID));
        // ... and its forked child inherits it.
        assert_eq!(cache.get(4244).unwrap().container_id.as_deref(), Some(CID));
    }

    #[test]
    fn exec_after_a_move_resolves_the_new_cgroup_even_when_the_process_is_gone() {
        let (mut cache, procs, cg, _, docker) = fake_cache();
        fake_proc(procs.path(), 4242, Some("0::/\n"));
        let root = ino(cg.path());
        // A host process: no container.
        let mut fork = in_cgroup(ev(4242, EventData::Fork { child_pid: 4245 }), root);
        cache.enrich(&mut fork);
        assert_eq!(fork.process.container_id, None);
        assert_eq!(cache.get(4245).unwrap().container_id, None);
        // Its child moved into docker's cgroup and exec'd; it is not in /proc (already exited),
        // so the cgroup tree is searched for the id.
        let exec = EventData::Exec(ExecData {
            filename: "/bin/true".into(),
            args: vec!["true".into()],
            args_truncated: false,
        });
        let mut e = in_cgroup(ev(4245, exec), docker);
        cache.enrich(&mut e);
        assert_eq!(e.process.container_id.as_deref(), Some(CID2));
        assert_eq!(e.process.ppid, 4242);
        // A later event of the same process shares the cached record.
        let mut exit = in_cgroup(ev(4245, EventData::Exit { code: 0 }), docker);
        cache.enrich(&mut exit);
        assert_eq!(exit.process.container_id.as_deref(), Some(CID2));
    }

    #[test]
    fn cgroup_walk_finds_nested_directories_only() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        fs::create_dir_all(&deep).unwrap();
        fs::write(dir.path().join("a/file"), b"").unwrap();
        assert_eq!(
            find_cgroup(dir.path(), ino(&deep)).as_deref(),
            Some("/a/b/c")
        );
        assert_eq!(
            find_cgroup(dir.path(), ino(dir.path())).as_deref(),
            Some("/")
        );
        let file_ino = ino(&dir.path().join("a/file"));
        assert_eq!(find_cgroup(dir.path(), file_ino), None);
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
