//! The view a detector gets of one event ([`EventRef`]), the alert collector ([`Alerts`]) and
//! open(2) flag helpers.

use crate::bindings::palisade::plugin::types::{Alert, EventKind, FdDupData};
use crate::model::{EventData, ExecData, FileOpenData, Process};

/// open(2) flags as the kernel passes them (x86_64 / aarch64 values).
pub mod open_flags {
    /// Access mode mask.
    pub const O_ACCMODE: u32 = 0o3;
    /// Write only.
    pub const O_WRONLY: u32 = 0o1;
    /// Read and write.
    pub const O_RDWR: u32 = 0o2;
    /// Create if absent.
    pub const O_CREAT: u32 = 0o100;
    /// Truncate.
    pub const O_TRUNC: u32 = 0o1000;
    /// Append.
    pub const O_APPEND: u32 = 0o2000;

    /// True when an open with these flags can modify the file (write access, create or truncate).
    pub fn is_write(flags: u32) -> bool {
        flags & O_ACCMODE != 0 || flags & (O_CREAT | O_TRUNC) != 0
    }

    /// The flags in the usual `O_RDONLY|O_CREAT` form (only the ones that matter for rules).
    pub fn describe(flags: u32) -> String {
        let mut parts = vec![match flags & O_ACCMODE {
            0 => "O_RDONLY",
            O_WRONLY => "O_WRONLY",
            O_RDWR => "O_RDWR",
            _ => "O_ACCMODE",
        }];
        for (bit, name) in [
            (O_CREAT, "O_CREAT"),
            (O_TRUNC, "O_TRUNC"),
            (O_APPEND, "O_APPEND"),
        ] {
            if flags & bit != 0 {
                parts.push(name);
            }
        }
        parts.join("|")
    }
}

impl FileOpenData {
    /// True when the open can modify the file (see [`open_flags::is_write`]).
    pub fn is_write(&self) -> bool {
        open_flags::is_write(self.open_flags)
    }
}

/// One event of a batch with its process resolved.
#[derive(Clone, Copy)]
pub struct EventRef<'a> {
    /// Index of the event in the batch (alerts pushed for it carry this index).
    pub index: u32,
    /// Time of the event, ns since the Unix epoch.
    pub ts_ns: u64,
    /// The process the event happened in.
    pub process: &'a Process,
    /// What happened.
    pub data: &'a EventData,
}

impl<'a> EventRef<'a> {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        self.data.kind()
    }

    /// The event's main path, if its kind has one (see [`EventData::path`]).
    pub fn path(&self) -> Option<&'a str> {
        self.data.path()
    }

    /// The exec payload, for exec events.
    pub fn exec(&self) -> Option<&'a ExecData> {
        match self.data {
            EventData::Exec(d) => Some(d),
            _ => None,
        }
    }

    /// The file-open payload, for file_open events.
    pub fn file_open(&self) -> Option<&'a FileOpenData> {
        match self.data {
            EventData::FileOpen(d) => Some(d),
            _ => None,
        }
    }

    /// The fd-dup payload, for fd_dup events.
    pub fn fd_dup(&self) -> Option<&'a FdDupData> {
        match self.data {
            EventData::FdDup(d) => Some(d),
            _ => None,
        }
    }
}

/// Collects the alerts of one batch, tagging each with the event it was raised for.
#[derive(Debug, Default)]
pub struct Alerts {
    list: Vec<Alert>,
    event_index: u32,
}

impl Alerts {
    /// An empty collector (the SDK makes one per batch; tests may make their own).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the event subsequent alerts belong to.
    pub fn set_event(&mut self, index: u32) {
        self.event_index = index;
    }

    /// Adds an alert for the current event.
    pub fn push(&mut self, mut alert: Alert) {
        alert.event_index = self.event_index;
        self.list.push(alert);
    }

    /// Number of alerts so far.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when no alert was raised.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The alerts so far.
    pub fn as_slice(&self) -> &[Alert] {
        &self.list
    }

    /// The alerts, consuming the collector.
    pub fn into_vec(self) -> Vec<Alert> {
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::open_flags::*;

    #[test]
    fn write_flags() {
        assert!(!is_write(0));
        assert!(is_write(O_WRONLY));
        assert!(is_write(O_RDWR));
        assert!(is_write(O_CREAT));
        assert!(is_write(O_TRUNC));
        assert!(!is_write(0o2000000)); // O_CLOEXEC alone
        assert_eq!(
            describe(O_WRONLY | O_CREAT | O_TRUNC),
            "O_WRONLY|O_CREAT|O_TRUNC"
        );
        assert_eq!(describe(0), "O_RDONLY");
    }
}
