//! Persistence of active actions: the state that freezes, quarantines and blocks leave behind
//! is recorded in `<state_dir>/actions.json`, so a restarted daemon re-applies it and
//! `palisade actions list` / `release` can work on it with or without the daemon running.
//! Every change is a read-modify-write under an exclusive `flock` on `actions.lock`, written to
//! a temporary file, fsynced and renamed over the old one: concurrent writers (the daemon and
//! the CLI) never lose each other's changes, and a crash leaves the old or the new file, never
//! half of one. This module stores and converts; it never acts on the system.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::audit::rfc3339;
use super::{ActionRequest, ActiveAction, ExecMatch, Mode, Workload};
use crate::capability::Capability;

/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "actions.json";
/// The lock file's name inside the state directory.
pub const LOCK_FILE: &str = "actions.lock";
/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid action state file: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: state file version {version} is not supported (expected {STATE_VERSION})")]
    Version { path: PathBuf, version: u32 },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One persisted action. `action` and `target` are written exactly as in the audit log
/// (`"freeze"`, `{"cgroup_path": "x"}`), so a line of one can be matched with the other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredAction {
    pub id: String,
    pub responder: String,
    pub action: String,
    pub target: serde_json::Value,
    /// `"enforce"` or `"monitor"`.
    pub mode: String,
    pub alert_id: String,
    /// RFC 3339 UTC, and the same instant in ns since the Unix epoch.
    pub since: String,
    pub since_ns: u64,
    /// The actuator's undo handle (empty for monitor-mode records).
    pub handle: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    actions: Vec<StoredAction>,
}

impl StoredAction {
    pub fn from_active(a: &ActiveAction) -> StoredAction {
        let since_ns = a
            .since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        StoredAction {
            id: a.id.clone(),
            responder: a.responder.clone(),
            action: a.request.name().to_owned(),
            target: a.request.target(),
            mode: a.mode.as_str().to_owned(),
            alert_id: a.alert_id.clone(),
            since: rfc3339(since_ns),
            since_ns,
            handle: a.handle.clone(),
        }
    }

    /// Back to the broker's form; `None` for an entry this version cannot interpret (written
    /// by a newer palisade, or edited by hand), which is then kept in the file untouched.
    pub fn to_active(&self) -> Option<ActiveAction> {
        let request = request_from(&self.action, &self.target)?;
        let capability = request.capability()?;
        let mode = match self.mode.as_str() {
            "enforce" => Mode::Enforce,
            "monitor" => Mode::Monitor,
            _ => return None,
        };
        Some(ActiveAction {
            id: self.id.clone(),
            responder: self.responder.clone(),
            capability,
            request,
            alert_id: self.alert_id.clone(),
            mode,
            since: UNIX_EPOCH + Duration::from_nanos(self.since_ns),
            handle: self.handle.clone(),
        })
    }
}

/// Inverse of `ActionRequest::{name, target}` for the actions that hold state.
fn request_from(action: &str, target: &serde_json::Value) -> Option<ActionRequest> {
    let path = || {
        target
            .get("path")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let capability = Capability::ALL.into_iter().find(|c| c.as_str() == action)?;
    Some(match capability {
        Capability::BlockExec => {
            ActionRequest::BlockExec(serde_json::from_value::<ExecMatch>(target.clone()).ok()?)
        }
        Capability::DenyOpen => ActionRequest::DenyOpen { path: path()? },
        Capability::NetworkQuarantine => ActionRequest::NetworkQuarantine(
            serde_json::from_value::<Workload>(target.clone()).ok()?,
        ),
        Capability::Freeze => {
            ActionRequest::Freeze(serde_json::from_value::<Workload>(target.clone()).ok()?)
        }
        Capability::QuarantineFile => ActionRequest::QuarantineFile { path: path()? },
        Capability::KillProcess | Capability::Notify => return None,
    })
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ActionStore {
    dir: PathBuf,
}

/// Holds the exclusive lock until dropped (closing the descriptor releases the flock).
struct Locked {
    _file: File,
}

impl ActionStore {
    /// A store in `dir`. The directory is created (0700) on the first write, so a daemon that
    /// never holds an action leaves no trace; something other than a directory there is an
    /// error now.
    pub fn open(dir: impl Into<PathBuf>) -> Result<ActionStore, StoreError> {
        let dir = dir.into();
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::Dir {
                path: dir,
                source: io::Error::from(io::ErrorKind::NotADirectory),
            });
        }
        Ok(ActionStore { dir })
    }

    fn ensure_dir(&self) -> Result<(), StoreError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        let failed = |source| StoreError::Dir {
            path: self.dir.clone(),
            source,
        };
        super::create_private_dir(&self.dir).map_err(failed)
    }

    /// A store for reading only: `dir` need not exist (then it is empty).
    pub fn at(dir: impl Into<PathBuf>) -> ActionStore {
        ActionStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn lock(&self) -> Result<Locked, StoreError> {
        self.ensure_dir()?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StoreError::Lock {
                path: path.clone(),
                source,
            })?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            #[expect(unsafe_code, reason = "flock through libc")]
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Locked { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(StoreError::Lock { path, source: err });
            }
        }
    }

    /// Every stored action, in file order (oldest first). A missing file is an empty store.
    pub fn load(&self) -> Result<Vec<StoredAction>, StoreError> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let file: StateFile = serde_json::from_str(&text).map_err(|source| StoreError::Parse {
            path: path.clone(),
            source,
        })?;
        if file.version != STATE_VERSION {
            return Err(StoreError::Version {
                path,
                version: file.version,
            });
        }
        Ok(file.actions)
    }

    /// The stored action `id`, if any.
    pub fn get(&self, id: &str) -> Result<Option<StoredAction>, StoreError> {
        Ok(self.load()?.into_iter().find(|a| a.id == id))
    }

    /// Applies `f` to the stored list under the lock and writes the result back if `f` says
    /// it changed something.
    pub fn update<R>(
        &self,
        f: impl FnOnce(&mut Vec<StoredAction>) -> (bool, R),
    ) -> Result<R, StoreError> {
        let _lock = self.lock()?;
        let mut actions = self.load()?;
        let (changed, result) = f(&mut actions);
        if changed {
            self.write(&actions)?;
        }
        Ok(result)
    }

    /// Adds or replaces `action`.
    pub fn insert(&self, action: &ActiveAction) -> Result<(), StoreError> {
        let stored = StoredAction::from_active(action);
        self.update(|actions| {
            match actions.iter_mut().find(|a| a.id == stored.id) {
                Some(slot) => *slot = stored,
                None => actions.push(stored),
            }
            (true, ())
        })
    }

    /// Removes `id`; returns what was stored under it.
    pub fn remove(&self, id: &str) -> Result<Option<StoredAction>, StoreError> {
        self.update(|actions| match actions.iter().position(|a| a.id == id) {
            Some(i) => (true, Some(actions.remove(i))),
            None => (false, None),
        })
    }

    fn write(&self, actions: &[StoredAction]) -> Result<(), StoreError> {
        let path = self.path();
        let failed = |source: io::Error| StoreError::Write {
            path: path.clone(),
            source,
        };
        let file = StateFile {
            version: STATE_VERSION,
            actions: actions.to_vec(),
        };
        let mut text = serde_json::to_vec_pretty(&file).map_err(|e| failed(io::Error::other(e)))?;
        text.push(b'\n');
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(failed)?;
        out.write_all(&text)
            .and_then(|()| out.sync_all())
            .map_err(failed)?;
        fs::rename(&tmp, &path).map_err(failed)?;
        // The rename itself must reach the disk for the new state to survive a crash.
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// How long ago `since_ns` was, for humans ("3m ago").
pub fn age(since_ns: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secs = now.saturating_sub(since_ns / 1_000_000_000);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(id: &str, request: ActionRequest, mode: Mode) -> ActiveAction {
        ActiveAction {
            id: id.into(),
            responder: "r".into(),
            capability: request.capability().unwrap(),
            request,
            alert_id: "al".into(),
            mode,
            since: UNIX_EPOCH + Duration::from_nanos(1_795_884_921_500_000_123),
            handle: "h".into(),
        }
    }

    #[test]
    fn every_stateful_request_round_trips() {
        let reqs = [
            ActionRequest::BlockExec(ExecMatch::Path("/x".into())),
            ActionRequest::BlockExec(ExecMatch::Sha256("ff".into())),
            ActionRequest::DenyOpen {
                path: "/etc/x".into(),
            },
            ActionRequest::NetworkQuarantine(Workload::ContainerId("abcdef0123456".into())),
            ActionRequest::Freeze(Workload::CgroupId(42)),
            ActionRequest::Freeze(Workload::CgroupPath("a/b".into())),
            ActionRequest::QuarantineFile {
                path: "/tmp/x".into(),
            },
        ];
        for (i, req) in reqs.into_iter().enumerate() {
            let a = active(&format!("a{i}"), req, Mode::Enforce);
            let stored = StoredAction::from_active(&a);
            assert_eq!(stored.to_active().as_ref(), Some(&a), "{stored:?}");
        }
        let kill = StoredAction {
            action: "kill-process".into(),
            ..StoredAction::from_active(&active(
                "k",
                ActionRequest::DenyOpen { path: "/x".into() },
                Mode::Monitor,
            ))
        };
        assert_eq!(kill.to_active(), None);
    }

    #[test]
    fn insert_remove_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = ActionStore::open(dir.path().join("state")).unwrap();
        assert!(store.load().unwrap().is_empty());
        assert!(
            !store.dir().exists(),
            "created only when something is written"
        );
        let a = active(
            "a1",
            ActionRequest::Freeze(Workload::CgroupPath("x".into())),
            Mode::Enforce,
        );
        let b = active(
            "b2",
            ActionRequest::QuarantineFile { path: "/y".into() },
            Mode::Monitor,
        );
        store.insert(&a).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(store.dir()).unwrap().mode() & 0o777, 0o700);
        store.insert(&b).unwrap();
        // A second handle on the same directory (another process) sees both.
        let other = ActionStore::at(dir.path().join("state"));
        let ids: Vec<String> = other.load().unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["a1", "b2"]);
        assert_eq!(other.remove("a1").unwrap().map(|s| s.id), Some("a1".into()));
        assert_eq!(other.remove("a1").unwrap(), None);
        assert_eq!(
            store.get("b2").unwrap().and_then(|s| s.to_active()),
            Some(b)
        );
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(
            text.contains("\"since\": \"2026-11-28T16:55:21.500000123Z\""),
            "{text}"
        );
    }

    /// Holds a "block" in a shared set, as a kernel map would; `reapply` puts it back.
    #[derive(Default)]
    struct FakeMap(std::sync::Mutex<std::collections::BTreeSet<String>>);

    impl crate::actions::Actuator for std::sync::Arc<FakeMap> {
        fn execute(
            &self,
            ctx: &crate::actions::ExecContext<'_>,
            _req: &ActionRequest,
        ) -> Result<crate::actions::Outcome, crate::actions::ActionError> {
            self.0.lock().unwrap().insert(ctx.action_id.to_owned());
            Ok(crate::actions::Outcome::Held {
                handle: format!("key-{}", ctx.action_id),
            })
        }
        fn release(&self, action: &ActiveAction) -> Result<(), crate::actions::ActionError> {
            self.0.lock().unwrap().remove(&action.id);
            Ok(())
        }
    }

    #[test]
    fn broker_persists_reapplies_and_operator_releases() {
        use crate::actions::{Broker, BrokerSettings, LogNotifySink, RequestContext, OPERATOR};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let state = dir.path().join("state");
        let broker = |map: &Arc<FakeMap>| {
            let settings = BrokerSettings {
                mode: Mode::Enforce,
                per_responder: Default::default(),
                rate_limit_per_minute: 0,
                audit_log: Some(audit.clone()),
            };
            let b = Broker::new(settings, Box::new(LogNotifySink))
                .unwrap()
                .with_actuator(Capability::BlockExec, Box::new(Arc::clone(map)));
            let loaded = b.attach_store(ActionStore::open(&state).unwrap()).unwrap();
            (b, loaded)
        };
        let ctx = RequestContext {
            responder: "r",
            granted: [Capability::BlockExec, Capability::Notify]
                .into_iter()
                .collect(),
            alert_id: "al-9",
        };
        let block = ActionRequest::BlockExec(ExecMatch::Path("/tmp/x".into()));

        let first_map = Arc::new(FakeMap::default());
        let (first, loaded) = broker(&first_map);
        assert_eq!(loaded, 0);
        let kept = first.request(&ctx, block.clone()).unwrap().id;
        let released = first.request(&ctx, block.clone()).unwrap().id;
        first
            .request(
                &ctx,
                ActionRequest::Release {
                    action_id: released.clone(),
                },
            )
            .unwrap();
        // One-shot actions are not persisted.
        first
            .request(
                &ctx,
                ActionRequest::Notify {
                    channel: "default".into(),
                    message: "m".into(),
                },
            )
            .unwrap();
        let ids: Vec<String> = ActionStore::at(&state)
            .load()
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(ids, std::slice::from_ref(&kept));
        drop(first);

        // A restart: the map is empty again until the persisted block is re-applied.
        let map = Arc::new(FakeMap::default());
        let (second, loaded) = broker(&map);
        assert_eq!(loaded, 1);
        let summary = second.reapply_held();
        assert_eq!(
            (summary.reapplied, summary.dropped, summary.failed),
            (1, 0, 0)
        );
        assert!(map.0.lock().unwrap().contains(&kept));
        assert_eq!(second.active()[0].handle, format!("key-{kept}"));

        // The operator's release (another broker on the same state file, as the CLI is).
        let (cli, _) = broker(&map);
        cli.release_as_operator(&kept).unwrap();
        assert!(map.0.lock().unwrap().is_empty());
        assert!(ActionStore::at(&state).load().unwrap().is_empty());
        assert!(cli.release_as_operator(&kept).is_err());
        // The running broker does not undo it a second time, and forgets it.
        second
            .request(
                &ctx,
                ActionRequest::Release {
                    action_id: kept.clone(),
                },
            )
            .unwrap();
        assert!(second.active().is_empty());

        let text = fs::read_to_string(&audit).unwrap();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let by_operator: Vec<(String, String)> = records
            .iter()
            .filter(|r| r["responder"] == OPERATOR)
            .map(|r| {
                (
                    r["result"].as_str().unwrap().to_owned(),
                    r["alert_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            by_operator,
            [
                ("ok".to_owned(), "al-9".to_owned()),
                ("invalid_target".to_owned(), String::new())
            ]
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = ActionStore::open(dir.path()).unwrap();
        fs::write(store.path(), "{not json").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("actions.json"), "{err}");
        fs::write(store.path(), r#"{"version": 9, "actions": []}"#).unwrap();
        assert!(matches!(
            store.load(),
            Err(StoreError::Version { version: 9, .. })
        ));
    }
}
