//! `palisade record`: live kernel events written as JSON Lines in the replay schema
//! (docs/events.md), so a capture can be replayed through detectors later
//! (`palisade replay FILE`). Owns the pre-flight check that names what a live kernel source
//! is missing (privileges, BTF, tracefs), the kind list parser, and the file writer.
//!
//! The eBPF reader must never block, so the sink only hands events to a bounded queue; a writer
//! thread serialises and writes them. If the disk cannot keep up, the queue overflows and the
//! loss is counted and reported, never silent. `--kinds` attaches only the named kinds' kernel
//! programs (plus the process-lifecycle ones the process cache is built from) and writes the
//! in-kernel filter as the daemon does for its plugins, so other kinds cost the traced tasks
//! nothing and never reach userspace.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::event::source::{Delivery, EventSink, SourceError};
use crate::event::{Event, EventKind, KindSet};

/// Events queued between the kernel reader and the file writer.
pub const QUEUE_EVENTS: usize = 65_536;

/// Effective-capability bits checked by the pre-flight (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Why recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot record kernel events: missing {missing}. {fix}")]
    Missing { missing: String, fix: String },
    #[error("--kinds {text:?}: {reason}")]
    Kinds { text: String, reason: String },
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[cfg(feature = "ebpf")]
    #[error("cannot narrow the kernel programs to --kinds: {0}")]
    Filter(#[from] crate::ebpf::filter::FilterError),
    #[error("cannot start thread {name}: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What `palisade record` needs from the system, read from it or given by a test.
#[derive(Debug, Clone)]
pub struct Preflight {
    /// Effective capability set (`CapEff` in /proc/self/status).
    pub cap_eff: u64,
    /// The kernel's BTF (`/sys/kernel/btf/vmlinux`).
    pub btf: PathBuf,
    /// Tracepoint directories; one of them must exist (tracefs, or its old debugfs mount).
    pub tracefs: Vec<PathBuf>,
}

impl Preflight {
    /// This process on this system.
    pub fn system() -> Self {
        let cap_eff = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            })
            .unwrap_or(0);
        Preflight {
            cap_eff,
            btf: PathBuf::from("/sys/kernel/btf/vmlinux"),
            tracefs: vec![
                PathBuf::from("/sys/kernel/tracing/events"),
                PathBuf::from("/sys/kernel/debug/tracing/events"),
            ],
        }
    }

    /// Every missing piece at once, each with its fix, so one run tells the whole story.
    pub fn check(&self) -> Result<(), RecordError> {
        let has = |cap: u32| self.cap_eff & (1 << cap) != 0;
        let mut missing = Vec::new();
        let mut fix = Vec::new();
        if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
            missing.push("privileges (CAP_BPF and CAP_PERFMON, or root)".to_owned());
            fix.push("run as root (sudo palisade record ...)".to_owned());
        }
        if !self.btf.exists() {
            missing.push(format!("kernel BTF ({})", self.btf.display()));
            fix.push("boot a kernel built with CONFIG_DEBUG_INFO_BTF=y".to_owned());
        }
        if !self.tracefs.iter().any(|p| p.is_dir()) {
            let paths: Vec<String> = self
                .tracefs
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            missing.push(format!("tracefs ({})", paths.join(" or ")));
            fix.push("mount it: mount -t tracefs nodev /sys/kernel/tracing".to_owned());
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(RecordError::Missing {
            missing: missing.join(", "),
            fix: format!("To fix: {}.", fix.join("; ")),
        })
    }
}

/// Parses `--kinds exec,file_open` (names as in docs/events.md).
pub fn parse_kinds(text: &str) -> Result<KindSet, RecordError> {
    let mut set = KindSet::default();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(kind) = EventKind::ALL.into_iter().find(|k| k.as_str() == name) else {
            let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(RecordError::Kinds {
                text: text.to_owned(),
                reason: format!("unknown kind {name:?}; known kinds: {}", known.join(", ")),
            });
        };
        set.insert(kind);
    }
    if set == KindSet::default() {
        return Err(RecordError::Kinds {
            text: text.to_owned(),
            reason: "no kind given".to_owned(),
        });
    }
    Ok(set)
}

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub output: PathBuf,
    /// Stop after this long; `None` records until the stop flag (SIGINT/SIGTERM).
    pub duration: Option<Duration>,
    /// Only these kinds; `None` records every kind.
    pub kinds: Option<KindSet>,
}

/// What a recording wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordSummary {
    /// Events written to the file.
    pub written: u64,
    /// Events lost because the writer fell behind (queue full).
    pub dropped: u64,
    /// Events of kinds not asked for.
    pub skipped: u64,
}

/// The reader-side half: filters by kind and queues without blocking.
pub struct RecordSink {
    tx: Sender<Event>,
    kinds: KindSet,
    dropped: AtomicU64,
    skipped: AtomicU64,
}

impl EventSink for RecordSink {
    fn submit(&self, event: Event, _delivery: Delivery) {
        if !self.kinds.contains(event.kind()) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A JSON Lines event file being written by its own thread. Drop every [`RecordSink`] clone
/// and call [`EventFile::finish`] to flush it.
pub struct EventFile {
    sink: Arc<RecordSink>,
    writer: std::thread::JoinHandle<Result<u64, RecordError>>,
}

impl EventFile {
    /// Creates `path` and writes a `#` header line (ignored by the replay reader) naming the
    /// host and the kinds, so a capture says where it came from.
    pub fn create(path: &Path, kinds: Option<KindSet>) -> Result<Self, RecordError> {
        let file = File::create(path).map_err(|source| RecordError::Create {
            path: path.to_owned(),
            source,
        })?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let kinds_text = match kinds {
            Some(set) => set.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(","),
            None => "all".to_owned(),
        };
        let header = format!(
            "# palisade record: host {} kinds {kinds_text}\n",
            crate::daemon::hostname(None)
        );
        let write_err = |source| RecordError::Write {
            path: path.to_owned(),
            source,
        };
        out.write_all(header.as_bytes()).map_err(write_err)?;
        let (tx, rx) = bounded(QUEUE_EVENTS);
        let owned = path.to_owned();
        let writer = std::thread::Builder::new()
            .name("record-writer".into())
            .spawn(move || write_lines(rx, out, &owned))
            .map_err(|source| RecordError::Thread {
                name: "record-writer",
                source,
            })?;
        Ok(EventFile {
            sink: Arc::new(RecordSink {
                tx,
                kinds: kinds.unwrap_or(KindSet(u32::MAX)),
                dropped: AtomicU64::new(0),
                skipped: AtomicU64::new(0),
            }),
            writer,
        })
    }

    /// The sink to hand to a source.
    pub fn sink(&self) -> Arc<RecordSink> {
        self.sink.clone()
    }

    /// Closes the queue, waits for the writer and flushes. Every other clone of the sink must
    /// be dropped first (the writer ends when the queue's last sender goes).
    pub fn finish(self) -> Result<RecordSummary, RecordError> {
        let EventFile { sink, writer } = self;
        let (dropped, skipped) = (
            sink.dropped.load(Ordering::Relaxed),
            sink.skipped.load(Ordering::Relaxed),
        );
        drop(sink);
        let written = writer.join().map_err(|_| RecordError::Thread {
            name: "record-writer",
            source: std::io::Error::other("the writer thread panicked"),
        })??;
        Ok(RecordSummary {
            written,
            dropped,
            skipped,
        })
    }
}

fn write_lines(
    rx: Receiver<Event>,
    mut out: BufWriter<File>,
    path: &Path,
) -> Result<u64, RecordError> {
    let write_err = |source| RecordError::Write {
        path: path.to_owned(),
        source,
    };
    let mut written = 0;
    let mut line = Vec::with_capacity(4096);
    for event in rx {
        line.clear();
        serde_json::to_writer(&mut line, &event)
            .map_err(|e| write_err(std::io::Error::other(e)))?;
        line.push(b'\n');
        out.write_all(&line).map_err(write_err)?;
        written += 1;
    }
    out.flush().map_err(write_err)?;
    Ok(written)
}

/// Records live kernel events into `options.output` until `options.duration` passes or `stop`
/// is set. `on_ready` runs once every probe is attached: events caused after it are captured.
#[cfg(feature = "ebpf")]
pub fn record(
    options: &RecordOptions,
    stop: &crate::event::source::StopFlag,
    on_ready: impl FnOnce(),
) -> Result<RecordSummary, RecordError> {
    use crate::event::source::EventSource;

    Preflight::system().check()?;
    let mut source = crate::ebpf::EbpfSource::load(crate::ebpf::EbpfConfig {
        // With --kinds, only the lifecycle programs come up at load; `narrow` attaches the
        // asked kinds' programs. Without, every program is attached and passes everything.
        on_demand: options.kinds.is_some(),
        ..crate::ebpf::EbpfConfig::default()
    })
    .map_err(SourceError::from)?;
    if let Some(kinds) = options.kinds {
        // Kinds not asked for stay in the kernel, their programs unattached (the lifecycle
        // kinds always come up: the process cache needs them; the sink drops them when not
        // asked for).
        let wanted = crate::plugin::subscription::Subscription {
            kinds,
            ..Default::default()
        };
        source.narrow(&crate::ebpf::FilterPlan::from_subscriptions([&wanted]))?;
    }
    let file = EventFile::create(&options.output, options.kinds)?;
    let sink = file.sink();
    let reader_stop = stop.clone();
    let reader = std::thread::Builder::new()
        .name("record-reader".into())
        .spawn(move || {
            let summary = source.run(&*sink, &reader_stop);
            drop(sink);
            summary
        })
        .map_err(|source| RecordError::Thread {
            name: "record-reader",
            source,
        })?;
    tracing::info!(output = %options.output.display(), duration_s = options.duration.map(|d| d.as_secs_f64()), "recording");
    on_ready();
    let start = std::time::Instant::now();
    while !stop.is_stopped() && options.duration.is_none_or(|d| start.elapsed() < d) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.stop();
    reader.join().map_err(|_| RecordError::Thread {
        name: "record-reader",
        source: std::io::Error::other("the reader thread panicked"),
    })??;
    let summary = file.finish()?;
    if summary.dropped > 0 {
        tracing::warn!(
            dropped = summary.dropped,
            "the file writer fell behind: events were dropped"
        );
    }
    tracing::info!(
        written = summary.written,
        dropped = summary.dropped,
        skipped = summary.skipped,
        output = %options.output.display(),
        "recording finished"
    );
    Ok(summary)
}

/// Without the `ebpf` feature there is no live source to record from.
#[cfg(not(feature = "ebpf"))]
pub fn record(
    _options: &RecordOptions,
    _stop: &crate::event::source::StopFlag,
    _on_ready: impl FnOnce(),
) -> Result<RecordSummary, RecordError> {
    Err(RecordError::Missing {
        missing: "the kernel (eBPF) source in this build".to_owned(),
        fix: "To fix: rebuild with `cargo build --release -p palisade-host --features ebpf` \
              (scripts/setup.sh installs the toolchain)."
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::replay::parse_event_line;
    use crate::event::{EventData, Process};

    fn all_caps() -> u64 {
        (1 << CAP_BPF) | (1 << CAP_PERFMON)
    }

    #[test]
    fn preflight_names_each_missing_piece_and_its_fix() {
        let dir = tempfile::tempdir().unwrap();
        let btf = dir.path().join("vmlinux");
        let tracing = dir.path().join("events");
        std::fs::write(&btf, b"").unwrap();
        std::fs::create_dir(&tracing).unwrap();
        let ok = Preflight {
            cap_eff: all_caps(),
            btf: btf.clone(),
            tracefs: vec![dir.path().join("nope"), tracing.clone()],
        };
        ok.check().unwrap();
        Preflight {
            cap_eff: 1 << CAP_SYS_ADMIN,
            ..ok.clone()
        }
        .check()
        .unwrap();
        // (preflight, what the message must say, what it must not)
        let cases = [
            (
                Preflight {
                    cap_eff: 1 << CAP_BPF,
                    ..ok.clone()
                },
                vec![
                    "privileges (CAP_BPF and CAP_PERFMON, or root)",
                    "run as root",
                ],
                vec!["BTF", "tracefs"],
            ),
            (
                Preflight {
                    btf: dir.path().join("no-btf"),
                    ..ok.clone()
                },
                vec!["kernel BTF (", "no-btf", "CONFIG_DEBUG_INFO_BTF=y"],
                vec!["privileges", "tracefs"],
            ),
            (
                Preflight {
                    tracefs: vec![dir.path().join("nope")],
                    ..ok.clone()
                },
                vec!["tracefs (", "mount -t tracefs"],
                vec!["privileges", "BTF"],
            ),
            (
                Preflight {
                    cap_eff: 0,
                    btf: dir.path().join("no-btf"),
                    tracefs: vec![],
                },
                vec!["privileges", "kernel BTF", "tracefs", "run as root"],
                vec![],
            ),
        ];
        for (pre, must, must_not) in cases {
            let msg = pre.check().unwrap_err().to_string();
            assert!(
                msg.starts_with("cannot record kernel events: missing "),
                "{msg}"
            );
            for m in must {
                assert!(msg.contains(m), "{msg:?} lacks {m:?}");
            }
            for m in must_not {
                assert!(!msg.contains(m), "{msg:?} has {m:?}");
            }
        }
    }

    #[test]
    fn parses_kind_lists() {
        let set = parse_kinds("exec, file_open,,").unwrap();
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [EventKind::Exec, EventKind::FileOpen]
        );
        let err = parse_kinds("exec,open").unwrap_err().to_string();
        assert!(err.contains("unknown kind \"open\""), "{err}");
        assert!(err.contains("file_open"), "{err}");
        assert!(parse_kinds(" , ").is_err());
    }

    fn event(pid: u32, data: EventData) -> Event {
        Event {
            ts_ns: 1_795_885_215_001_000_000,
            process: Arc::new(Process {
                pid,
                comm: "cat".into(),
                exe: "/usr/bin/cat".into(),
                args: vec!["cat".into(), "/etc/shadow".into()],
                container_id: Some("ab".repeat(32)),
                ..Process::default()
            }),
            data,
        }
    }

    #[test]
    fn writes_replayable_lines_of_the_asked_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        let kinds = parse_kinds("file_open,exit").unwrap();
        let file = EventFile::create(&path, Some(kinds)).unwrap();
        let sink = file.sink();
        let open = event(
            7,
            EventData::FileOpen(crate::event::FileOpenData {
                path: "/etc/shadow".into(),
                flags: 0,
                mode: 0,
                result: Some(3),
            }),
        );
        let exit = event(7, EventData::Exit { code: 2 });
        sink.submit(open.clone(), Delivery::NeverBlock);
        sink.submit(
            event(7, EventData::Fork { child_pid: 8 }),
            Delivery::NeverBlock,
        );
        sink.submit(exit.clone(), Delivery::NeverBlock);
        drop(sink);
        let summary = file.finish().unwrap();
        assert_eq!(
            summary,
            RecordSummary {
                written: 2,
                dropped: 0,
                skipped: 1
            }
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("# palisade record: host ")
                && lines[0].ends_with("kinds exit,file_open"),
            "{}",
            lines[0]
        );
        let parsed: Vec<Event> = lines[1..]
            .iter()
            .map(|l| parse_event_line(l).unwrap())
            .collect();
        assert_eq!(parsed, [open, exit]);
    }
}
