//! The `freeze` actuator: stops every process of a workload with the cgroup freezer, and thaws
//! it on release. A workload (cgroup id, container id or cgroup path) is resolved to a cgroup
//! v2 directory, whose `cgroup.freeze` is set, or failing that to a cgroup v1 freezer directory,
//! whose `freezer.state` is set; the request then waits (bounded) until the kernel reports the
//! whole cgroup frozen. The hierarchies are found from the mount table, never assumed. It refuses
//! the root cgroup and any cgroup that contains the daemon itself (freezing it would freeze
//! the daemon, and with it every later thaw).
//!
//! The handle records the cgroup's identity ([`CgroupIdentity`]) besides its path: a workload
//! restarted under the same name (`docker restart`, a systemd unit restart) gets a new, thawed
//! cgroup at the same path, which [`Actuator::holds`] notices so the broker freezes it again.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    ActionError, ActionRequest, ActiveAction, Actuator, ExecContext, Hold, Outcome, Workload,
};

/// Most cgroup directories visited when searching for an id or a container.
const MAX_WALK: usize = 200_000;
/// Shortest container id accepted (as in the WIT: a unique prefix of at least 12 characters).
const MIN_CONTAINER_ID: usize = 12;

/// Which freezer a cgroup directory uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freezer {
    /// cgroup v2: `cgroup.freeze` / `cgroup.events`.
    V2,
    /// cgroup v1 freezer controller: `freezer.state`.
    V1,
}

/// Which cgroup a directory is, as opposed to where: a cgroup removed and created again at the
/// same path is another one. For cgroup v2 the inode number of the directory is the kernel's
/// cgroup id (`dev` is 0: one hierarchy); for a v1 freezer directory it is the (dev, ino) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupIdentity {
    pub dev: u64,
    pub ino: u64,
}

impl CgroupIdentity {
    /// The identity of the cgroup at `dir` now; `None` when it does not exist.
    pub fn of(freezer: Freezer, dir: &Path) -> Option<CgroupIdentity> {
        let meta = fs::metadata(dir).ok()?;
        Some(CgroupIdentity {
            dev: match freezer {
                Freezer::V2 => 0,
                Freezer::V1 => meta.dev(),
            },
            ino: meta.ino(),
        })
    }
}

impl std::fmt::Display for CgroupIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dev {
            0 => write!(f, "{}", self.ino),
            dev => write!(f, "{dev}.{}", self.ino),
        }
    }
}

impl std::str::FromStr for CgroupIdentity {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<CgroupIdentity, Self::Err> {
        Ok(match s.split_once('.') {
            Some((dev, ino)) => CgroupIdentity {
                dev: dev.parse()?,
                ino: ino.parse()?,
            },
            None => CgroupIdentity {
                dev: 0,
                ino: s.parse()?,
            },
        })
    }
}

/// A resolved workload: the cgroup directory to freeze.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeTarget {
    pub freezer: Freezer,
    pub dir: PathBuf,
    /// The cgroup's identity when it was resolved; `None` in handles written before it was
    /// recorded.
    pub id: Option<CgroupIdentity>,
}

impl FreezeTarget {
    /// The target at `dir`, with the identity of the cgroup there now.
    pub fn at(freezer: Freezer, dir: PathBuf) -> FreezeTarget {
        let id = CgroupIdentity::of(freezer, &dir);
        FreezeTarget { freezer, dir, id }
    }

    /// The undo handle kept in the broker and the state file: `v2@<id>:<dir>` or
    /// `v1@<dev>.<ino>:<dir>` (`v2:<dir>` / `v1:<dir>` without an identity, as older versions
    /// wrote them).
    pub fn handle(&self) -> String {
        let tag = match self.freezer {
            Freezer::V2 => "v2",
            Freezer::V1 => "v1",
        };
        match self.id {
            Some(id) => format!("{tag}@{id}:{}", self.dir.display()),
            None => format!("{tag}:{}", self.dir.display()),
        }
    }

    /// Parses [`FreezeTarget::handle`], old handles without an identity included.
    pub fn from_handle(handle: &str) -> Option<FreezeTarget> {
        // The tag never holds a ':'; the directory may.
        let (tag, dir) = handle.split_once(':')?;
        let (tag, id) = match tag.split_once('@') {
            Some((tag, id)) => (tag, Some(id.parse().ok()?)),
            None => (tag, None),
        };
        let freezer = match tag {
            "v2" => Freezer::V2,
            "v1" => Freezer::V1,
            _ => return None,
        };
        Some(FreezeTarget {
            freezer,
            dir: PathBuf::from(dir),
            id,
        })
    }
}

/// Whether two freeze handles name the same cgroup directory, whatever identity each recorded:
/// a stale handle of a recreated cgroup still thaws that directory, so it counts as a holder of
/// the new one's freeze. Unreadable handles compare as strings.
fn same_cgroup(a: &str, b: &str) -> bool {
    match (FreezeTarget::from_handle(a), FreezeTarget::from_handle(b)) {
        (Some(x), Some(y)) => x.freezer == y.freezer && x.dir == y.dir,
        _ => a == b,
    }
}

/// Where the cgroup hierarchies are mounted, and where the daemon itself sits in them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLayout {
    /// The cgroup2 mount point.
    pub v2_root: Option<PathBuf>,
    /// The cgroup v1 hierarchy that carries the freezer controller.
    pub v1_freezer_root: Option<PathBuf>,
    /// The daemon's own cgroup directories (v2, v1 freezer), refused together with their
    /// ancestors.
    pub own: Vec<PathBuf>,
}

impl CgroupLayout {
    /// Reads /proc/self/mountinfo and /proc/self/cgroup. An unreadable mount table leaves
    /// both hierarchies unknown (freezing is then refused), and says why.
    pub fn detect() -> CgroupLayout {
        let mounts = crate::mountinfo::read_self().unwrap_or_else(|err| {
            tracing::warn!(error = %err, "cgroup hierarchies unknown: freeze unavailable");
            Vec::new()
        });
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        CgroupLayout::from_mounts(&mounts, &own)
    }

    fn from_mounts(mounts: &[crate::mountinfo::Mount], self_cgroup: &str) -> CgroupLayout {
        let mut layout = CgroupLayout::default();
        for mount in mounts {
            // A v1 hierarchy names its controllers in the superblock options.
            let freezer = || mount.super_options.split(',').any(|o| o == "freezer");
            match mount.fstype.as_str() {
                "cgroup2" if layout.v2_root.is_none() => {
                    layout.v2_root = Some(mount.mount_point.clone());
                }
                "cgroup" if layout.v1_freezer_root.is_none() && freezer() => {
                    layout.v1_freezer_root = Some(mount.mount_point.clone());
                }
                _ => {}
            }
        }
        for line in self_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let root = if controllers.is_empty() {
                layout.v2_root.as_ref()
            } else if controllers.split(',').any(|c| c == "freezer") {
                layout.v1_freezer_root.as_ref()
            } else {
                None
            };
            if let Some(root) = root {
                layout.own.push(root.join(path.trim_start_matches('/')));
            }
        }
        layout
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct FreezeActuator {
    layout: CgroupLayout,
    /// How long a freeze (or thaw) may take to be reported complete.
    settle: Duration,
}

impl Default for FreezeActuator {
    fn default() -> Self {
        FreezeActuator::new()
    }
}

impl FreezeActuator {
    /// Detects the cgroup layout of this host.
    pub fn new() -> FreezeActuator {
        FreezeActuator::with_layout(CgroupLayout::detect())
    }

    pub fn with_layout(layout: CgroupLayout) -> FreezeActuator {
        FreezeActuator {
            layout,
            settle: Duration::from_secs(2),
        }
    }

    /// How long to wait for the kernel to report a freeze complete (default 2 s).
    pub fn with_settle_timeout(mut self, settle: Duration) -> FreezeActuator {
        self.settle = settle;
        self
    }

    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    /// Finds the cgroup directory of `workload`, refusing the root and the daemon's own.
    pub fn resolve(&self, workload: &Workload) -> Result<FreezeTarget, ActionError> {
        let target = match workload {
            Workload::CgroupId(id) => self.by_id(*id)?,
            Workload::CgroupPath(path) => self.by_path(path)?,
            Workload::ContainerId(id) => self.by_container(id)?,
        };
        self.check_allowed(&target)?;
        Ok(target)
    }

    /// Refuses a directory that is not under this host's hierarchy of its kind (a hand-edited
    /// state file naming another directory).
    pub(crate) fn check_under_hierarchy(&self, target: &FreezeTarget) -> Result<(), ActionError> {
        let root = self.root_of(target.freezer);
        if !root.is_some_and(|r| target.dir.starts_with(r)) {
            return Err(ActionError::InvalidTarget(format!(
                "{} is not under a cgroup hierarchy of this host",
                target.dir.display()
            )));
        }
        Ok(())
    }

    fn v2_root(&self) -> Result<&Path, ActionError> {
        self.layout
            .v2_root
            .as_deref()
            .ok_or_else(|| ActionError::Unsupported("no cgroup2 hierarchy is mounted".into()))
    }

    fn by_id(&self, id: u64) -> Result<FreezeTarget, ActionError> {
        let root = self.v2_root()?;
        // A cgroup v2 id is the inode number of its directory in cgroupfs.
        let found = walk_dirs(root, |dir| {
            fs::metadata(dir).map(|m| m.ino() == id).unwrap_or(false)
        });
        match found.into_iter().next() {
            Some(dir) => Ok(FreezeTarget::at(Freezer::V2, dir)),
            None => Err(ActionError::InvalidTarget(format!(
                "no cgroup with id {id} under {}",
                root.display()
            ))),
        }
    }

    fn by_path(&self, path: &str) -> Result<FreezeTarget, ActionError> {
        let root = self.v2_root()?;
        let rel = Path::new(path.trim_start_matches('/'));
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(ActionError::InvalidTarget(format!(
                "cgroup path {path:?} must be relative to the cgroup root without `..`"
            )));
        }
        let dir = root.join(rel);
        if !dir.join("cgroup.procs").is_file() {
            return Err(ActionError::InvalidTarget(format!(
                "no cgroup {path:?} under {}",
                root.display()
            )));
        }
        Ok(FreezeTarget::at(Freezer::V2, dir))
    }

    fn by_container(&self, id: &str) -> Result<FreezeTarget, ActionError> {
        if id.len() < MIN_CONTAINER_ID
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ActionError::InvalidTarget(format!(
                "container id {id:?}: at least {MIN_CONTAINER_ID} letters, digits, '-' or '_' expected"
            )));
        }
        let candidates = [
            (Freezer::V2, self.layout.v2_root.as_deref()),
            (Freezer::V1, self.layout.v1_freezer_root.as_deref()),
        ];
        for (freezer, root) in candidates {
            let Some(root) = root else { continue };
            let matches = walk_dirs(root, |dir| {
                dir.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains(id))
            });
            // A container's own cgroup is the shallowest match; runtimes nest helpers below it.
            let Some(shallowest) = matches.iter().map(|d| d.components().count()).min() else {
                continue;
            };
            let top: Vec<&PathBuf> = matches
                .iter()
                .filter(|d| d.components().count() == shallowest)
                .collect();
            match top.as_slice() {
                [one] => return Ok(FreezeTarget::at(freezer, (*one).clone())),
                many => {
                    return Err(ActionError::InvalidTarget(format!(
                        "container id {id:?} is ambiguous: {} cgroups match under {}",
                        many.len(),
                        root.display()
                    )))
                }
            }
        }
        Err(ActionError::InvalidTarget(format!(
            "no cgroup of container {id:?} found"
        )))
    }

    /// Where the hierarchy of `freezer` is mounted here, if it is.
    fn root_of(&self, freezer: Freezer) -> Option<&Path> {
        match freezer {
            Freezer::V2 => self.layout.v2_root.as_deref(),
            Freezer::V1 => self.layout.v1_freezer_root.as_deref(),
        }
    }

    pub(crate) fn check_allowed(&self, target: &FreezeTarget) -> Result<(), ActionError> {
        let root = self.root_of(target.freezer);
        if root == Some(target.dir.as_path()) {
            return Err(ActionError::InvalidTarget(format!(
                "{} is the root cgroup; it is never frozen",
                target.dir.display()
            )));
        }
        if let Some(own) = self
            .layout
            .own
            .iter()
            .find(|own| own.starts_with(&target.dir))
        {
            return Err(ActionError::InvalidTarget(format!(
                "{} contains the palisade daemon ({}); it is never frozen",
                target.dir.display(),
                own.display()
            )));
        }
        Ok(())
    }

    /// Freezes `target` and waits until the kernel reports it frozen. A freeze that does not
    /// settle in time (a task stuck in uninterruptible sleep) stays requested and is reported
    /// as done with a warning: the kernel completes it when the task wakes, and the action
    /// must stay releasable.
    pub fn freeze(&self, target: &FreezeTarget) -> Result<(), ActionError> {
        let (file, value) = match target.freezer {
            Freezer::V2 => ("cgroup.freeze", "1"),
            Freezer::V1 => ("freezer.state", "FROZEN"),
        };
        write_control(&target.dir, file, value)?;
        if !self.wait_for(target, true) {
            tracing::warn!(cgroup = %target.dir.display(), timeout_ms = self.settle.as_millis() as u64, "freeze requested but not complete yet");
        }
        Ok(())
    }

    /// Thaws `target`. A cgroup that no longer exists has nothing left to thaw.
    pub fn thaw(&self, target: &FreezeTarget) -> Result<(), ActionError> {
        if !target.dir.is_dir() {
            tracing::info!(cgroup = %target.dir.display(), "cgroup is gone; nothing to thaw");
            return Ok(());
        }
        let (file, value) = match target.freezer {
            Freezer::V2 => ("cgroup.freeze", "0"),
            Freezer::V1 => ("freezer.state", "THAWED"),
        };
        write_control(&target.dir, file, value)?;
        if !self.wait_for(target, false) {
            tracing::warn!(cgroup = %target.dir.display(), "thaw requested but not reported complete yet");
        }
        Ok(())
    }

    /// Polls until the cgroup's frozen state is `frozen`; false on timeout.
    fn wait_for(&self, target: &FreezeTarget, frozen: bool) -> bool {
        let deadline = Instant::now() + self.settle;
        loop {
            if is_frozen(target) == Some(frozen) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Whether a freeze of `target` is requested (`cgroup.freeze` is 1, `freezer.state` is not
/// THAWED), whether or not the kernel has completed it; `None` when it cannot be read.
pub fn freeze_requested(target: &FreezeTarget) -> Option<bool> {
    match target.freezer {
        Freezer::V2 => {
            let want = fs::read_to_string(target.dir.join("cgroup.freeze")).ok()?;
            Some(want.trim() == "1")
        }
        Freezer::V1 => {
            let state = fs::read_to_string(target.dir.join("freezer.state")).ok()?;
            Some(state.trim() != "THAWED")
        }
    }
}

/// Whether the kernel reports `target` frozen (`None` when the state cannot be read).
pub fn is_frozen(target: &FreezeTarget) -> Option<bool> {
    match target.freezer {
        Freezer::V2 => {
            let events = fs::read_to_string(target.dir.join("cgroup.events")).ok()?;
            events
                .lines()
                .find_map(|l| l.strip_prefix("frozen "))
                .map(|v| v.trim() == "1")
        }
        Freezer::V1 => {
            let state = fs::read_to_string(target.dir.join("freezer.state")).ok()?;
            Some(state.trim() == "FROZEN")
        }
    }
}

fn write_control(dir: &Path, file: &str, value: &str) -> Result<(), ActionError> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ActionError::InvalidTarget(format!(
            "{} does not exist (cgroup gone, or no freezer there)",
            path.display()
        )),
        _ => ActionError::Failed(format!("cannot write {value:?} to {}: {e}", path.display())),
    })
}

/// Breadth-first walk of the directories under `root` (itself included), returning those
/// `pred` accepts, shallowest first; bounded by [`MAX_WALK`]. Symlinks are not followed
/// (cgroupfs has none).
fn walk_dirs(root: &Path, pred: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    let mut seen = 0usize;
    while let Some(dir) = queue.pop_front() {
        seen += 1;
        if seen > MAX_WALK {
            tracing::warn!(root = %root.display(), limit = MAX_WALK, "cgroup walk stopped at its limit");
            break;
        }
        if pred(&dir) {
            found.push(dir.clone());
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(entry.path());
            }
        }
    }
    found
}

impl Actuator for FreezeActuator {
    /// Two freezes of one cgroup share its `cgroup.freeze` (see [`same_cgroup`]).
    fn shares_state(&self, a: &ActiveAction, b: &ActiveAction) -> bool {
        same_cgroup(&a.handle, &b.handle)
    }

    fn execute(&self, _ctx: &ExecContext<'_>, req: &ActionRequest) -> Result<Outcome, ActionError> {
        let ActionRequest::Freeze(workload) = req else {
            return Err(ActionError::Failed(format!(
                "freeze actuator got a {} request",
                req.name()
            )));
        };
        let target = self.resolve(workload)?;
        self.freeze(&target)?;
        tracing::info!(cgroup = %target.dir.display(), "workload frozen");
        Ok(Outcome::Held {
            handle: target.handle(),
        })
    }

    fn release(&self, action: &ActiveAction) -> Result<(), ActionError> {
        let target = FreezeTarget::from_handle(&action.handle).ok_or_else(|| {
            ActionError::Failed(format!("unreadable freeze handle {:?}", action.handle))
        })?;
        // Never thaw something the freeze actuator would not have frozen.
        self.check_under_hierarchy(&target)?;
        self.thaw(&target)?;
        tracing::info!(cgroup = %target.dir.display(), "workload thawed");
        Ok(())
    }

    /// Freezes the cgroup at the recorded directory again, whichever cgroup is there now (the
    /// workload's, recreated by a restart, keeps its path; a request by cgroup id could not be
    /// resolved again). A directory that is gone is resolved from the request as at first,
    /// which fails with `InvalidTarget` when the workload is gone too.
    fn reapply(
        &self,
        ctx: &ExecContext<'_>,
        action: &ActiveAction,
    ) -> Result<Outcome, ActionError> {
        let Some(old) = FreezeTarget::from_handle(&action.handle) else {
            return self.execute(ctx, &action.request);
        };
        let target = FreezeTarget::at(old.freezer, old.dir.clone());
        if target.id.is_none() {
            return self.execute(ctx, &action.request);
        }
        self.check_under_hierarchy(&target)?;
        self.check_allowed(&target)?;
        if old.id.is_some() && old.id != target.id {
            tracing::warn!(
                action_id = ctx.action_id,
                cgroup = %target.dir.display(),
                old_id = %old.id.map(|i| i.to_string()).unwrap_or_default(),
                new_id = %target.id.map(|i| i.to_string()).unwrap_or_default(),
                "frozen cgroup was recreated; freezing the new one"
            );
        }
        self.freeze(&target)?;
        Ok(Outcome::Held {
            handle: target.handle(),
        })
    }

    /// Same cgroup (identity as recorded) and its freeze still requested. An old handle has
    /// no identity; its recreated cgroup shows as thawed.
    fn holds(&self, action: &ActiveAction) -> Hold {
        let Some(held) = FreezeTarget::from_handle(&action.handle) else {
            return Hold::Holds;
        };
        let Some(now) = CgroupIdentity::of(held.freezer, &held.dir) else {
            return Hold::Gone;
        };
        if let Some(old) = held.id.filter(|old| *old != now) {
            return Hold::Recreated {
                old: old.to_string(),
                new: now.to_string(),
            };
        }
        match freeze_requested(&held) {
            Some(true) => Hold::Holds,
            Some(false) => Hold::Undone {
                reason: format!("{} is thawed", held.dir.display()),
            },
            // Removed between the stat and the read.
            None => Hold::Gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
25 20 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu
28 25 0:25 / /sys/fs/cgroup/free\\040zer rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,freezer
";

    fn layout(self_cgroup: &str) -> CgroupLayout {
        CgroupLayout::from_mounts(&crate::mountinfo::parse(MOUNTS).unwrap(), self_cgroup)
    }

    #[test]
    fn layout_from_mounts_and_self_cgroup() {
        let l = layout("6:freezer:/a\n1:cpu:/\n0::/system.slice/palisade.service\n");
        assert_eq!(l.v2_root, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            l.v1_freezer_root,
            Some(PathBuf::from("/sys/fs/cgroup/free zer")),
            "escapes undone"
        );
        assert_eq!(
            l.own,
            vec![
                PathBuf::from("/sys/fs/cgroup/free zer/a"),
                PathBuf::from("/sys/fs/cgroup/unified/system.slice/palisade.service"),
            ]
        );
    }

    #[test]
    fn handles_round_trip() {
        let mut t = FreezeTarget {
            freezer: Freezer::V1,
            dir: PathBuf::from("/sys/fs/cgroup/freezer/x:y"),
            id: Some(CgroupIdentity { dev: 35, ino: 7 }),
        };
        assert_eq!(t.handle(), "v1@35.7:/sys/fs/cgroup/freezer/x:y");
        assert_eq!(FreezeTarget::from_handle(&t.handle()), Some(t.clone()));
        t.freezer = Freezer::V2;
        t.id = Some(CgroupIdentity { dev: 0, ino: 4242 });
        assert_eq!(t.handle(), "v2@4242:/sys/fs/cgroup/freezer/x:y");
        assert_eq!(FreezeTarget::from_handle(&t.handle()), Some(t));
        assert_eq!(FreezeTarget::from_handle("v3:/x"), None);
        assert_eq!(FreezeTarget::from_handle("v2@x1:/x"), None);
    }

    /// Handles written before the identity was recorded still decode (and re-encode as such).
    /// A stale handle (the cgroup since recreated) names the same directory as the new one: it
    /// counts as a holder, since releasing it thaws that directory.
    #[test]
    fn handles_of_one_directory_are_the_same_cgroup_whatever_their_identity() {
        let dir = "/sys/fs/cgroup/unified/system.slice/docker-ab.scope";
        assert!(same_cgroup(
            &format!("v2@123:{dir}"),
            &format!("v2@456:{dir}")
        ));
        assert!(same_cgroup(&format!("v2:{dir}"), &format!("v2@456:{dir}")));
        assert!(!same_cgroup(
            &format!("v2@1:{dir}"),
            &format!("v1@1.2:{dir}")
        ));
        assert!(!same_cgroup(
            &format!("v2@1:{dir}"),
            "v2@1:/sys/fs/cgroup/unified/x"
        ));
    }

    #[test]
    fn old_handles_without_an_identity_decode() {
        let old = "v2:/sys/fs/cgroup/unified/system.slice/docker-ab:c.scope";
        let t = FreezeTarget::from_handle(old).unwrap();
        assert_eq!(
            t,
            FreezeTarget {
                freezer: Freezer::V2,
                dir: PathBuf::from("/sys/fs/cgroup/unified/system.slice/docker-ab:c.scope"),
                id: None,
            }
        );
        assert_eq!(t.handle(), old);
        assert_eq!(
            FreezeTarget::from_handle("v1:/f/x").map(|t| (t.freezer, t.id)),
            Some((Freezer::V1, None))
        );
    }

    #[test]
    fn root_daemon_ancestors_and_bad_paths_are_refused() {
        let layout = layout("0::/system.slice/palisade.service\n");
        let f = FreezeActuator::with_layout(layout);
        let refuse = |dir: &str| {
            f.check_allowed(&FreezeTarget {
                freezer: Freezer::V2,
                dir: PathBuf::from(dir),
                id: None,
            })
        };
        assert!(matches!(
            refuse("/sys/fs/cgroup/unified"),
            Err(ActionError::InvalidTarget(_))
        ));
        assert!(matches!(
            refuse("/sys/fs/cgroup/unified/system.slice"),
            Err(ActionError::InvalidTarget(_))
        ));
        assert!(matches!(
            refuse("/sys/fs/cgroup/unified/system.slice/palisade.service"),
            Err(ActionError::InvalidTarget(_))
        ));
        assert!(refuse("/sys/fs/cgroup/unified/system.slice/other.service").is_ok());
        assert!(matches!(
            f.by_path("../etc"),
            Err(ActionError::InvalidTarget(_))
        ));
        assert!(matches!(
            f.by_container("short"),
            Err(ActionError::InvalidTarget(_))
        ));
    }
}
