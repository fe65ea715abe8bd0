//! The action audit log: one JSON object per line for every action request, granted or not,
//! appended and flushed per record so a crash loses at most the record being written. This
//! module only formats and writes; the broker decides what a record says, and a write failure
//! is the broker's to log and count (it never stops an action or panics).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{ActionsError, Mode};
use crate::logfile::LogFile;

/// How a request ended, as written in the audit `result` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditResult {
    /// Carried out (enforce mode).
    Ok,
    /// Only recorded (monitor mode).
    Recorded,
    Denied,
    RateLimited,
    Unsupported,
    InvalidTarget,
    Failed,
}

impl AuditResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditResult::Ok => "ok",
            AuditResult::Recorded => "recorded",
            AuditResult::Denied => "denied",
            AuditResult::RateLimited => "rate_limited",
            AuditResult::Unsupported => "unsupported",
            AuditResult::InvalidTarget => "invalid_target",
            AuditResult::Failed => "failed",
        }
    }
}

/// One audit line. Field order is the order written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339 UTC time with nanoseconds.
    pub time: String,
    /// The same instant in ns since the Unix epoch.
    pub ts_ns: u64,
    pub responder: String,
    /// Kebab-case action name (`kill-process`, ..., `notify`, `release`).
    pub action: String,
    /// What was acted on, as a small object (`{"pid": 42, ...}`, `{"path": "/x"}`).
    pub target: serde_json::Value,
    #[serde(serialize_with = "serialize_mode")]
    pub mode: Mode,
    pub result: AuditResult,
    /// The reason when `result` is not `ok`/`recorded`.
    pub error: Option<String>,
    pub alert_id: String,
    /// The receipt id for granted requests, the released id for `release`, else null.
    pub action_id: Option<String>,
}

fn serialize_mode<S: serde::Serializer>(mode: &Mode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode.as_str())
}

/// Nanoseconds since the Unix epoch now (0 if the clock is before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Formats ns since the Unix epoch as RFC 3339 UTC, e.g. `2026-11-28T16:55:21.123456789Z`.
pub fn rfc3339(ts_ns: u64) -> String {
    let secs = ts_ns / 1_000_000_000;
    let nanos = ts_ns % 1_000_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`,
/// restricted to non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// An append-only JSON Lines audit file, shared by all workers. Reopened by path after a log
/// rotation, checked before every record (requests are rate-limited, so a `stat` each is cheap).
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<LogFile>,
}

impl AuditLog {
    /// Opens (creating it and its directory if needed) `path` for appending.
    pub fn open(path: &Path) -> Result<AuditLog, ActionsError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ActionsError::AuditDir {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let file =
            LogFile::open(path, Duration::ZERO).map_err(|source| ActionsError::AuditOpen {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record as one line with a single write, so lines from concurrent writers
    /// (or another process appending) never interleave.
    pub fn write(&self, record: &AuditRecord) -> Result<(), ActionsError> {
        let mut line = serde_json::to_vec(record).map_err(|e| ActionsError::AuditWrite {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        // A poisoned lock only means another writer panicked mid-call; the file is still fine.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(&line)
            .and_then(|()| file.flush())
            .map_err(|source| ActionsError::AuditWrite {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2000-02-29 (leap day) 12:34:56.000000789
        assert_eq!(
            rfc3339(951_827_696_000_000_789),
            "2000-02-29T12:34:56.000000789Z"
        );
        // 2026-11-28T16:55:21Z
        assert_eq!(
            rfc3339(1_795_884_921_500_000_000),
            "2026-11-28T16:55:21.500000000Z"
        );
        assert_eq!(
            rfc3339(4_107_542_399_000_000_000),
            "2100-02-28T23:59:59.000000000Z"
        );
    }

    #[test]
    fn writes_one_line_per_record_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let record = AuditRecord {
            time: rfc3339(0),
            ts_ns: 0,
            responder: "r".into(),
            action: "notify".into(),
            target: serde_json::json!({"channel": "default", "message": "a\nb"}),
            mode: Mode::Enforce,
            result: AuditResult::Ok,
            error: None,
            alert_id: "al-1".into(),
            action_id: Some("x".into()),
        };
        AuditLog::open(&path).unwrap().write(&record).unwrap();
        // Reopening appends rather than truncating.
        AuditLog::open(&path).unwrap().write(&record).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for line in lines {
            let back: AuditRecord = serde_json::from_str(line).unwrap();
            assert_eq!(back, record);
        }
        assert!(text.contains(r#""result":"ok""#));
        assert!(text.contains(r#""mode":"enforce""#));
    }

    /// After logrotate renames the file, the next record starts a new one at the path.
    #[test]
    fn a_rotated_audit_log_is_reopened_before_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let mut record = AuditRecord {
            time: rfc3339(0),
            ts_ns: 0,
            responder: "r".into(),
            action: "notify".into(),
            target: serde_json::json!({"channel": "default"}),
            mode: Mode::Enforce,
            result: AuditResult::Ok,
            error: None,
            alert_id: "before".into(),
            action_id: None,
        };
        log.write(&record).unwrap();
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        record.alert_id = "after".into();
        log.write(&record).unwrap();
        let rotated = std::fs::read_to_string(dir.path().join("audit.jsonl.1")).unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(rotated.contains(r#""alert_id":"before""#) && rotated.lines().count() == 1);
        assert!(current.contains(r#""alert_id":"after""#) && current.lines().count() == 1);
    }

    #[test]
    fn open_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // A directory cannot be opened for appending.
        let err = AuditLog::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }
}
