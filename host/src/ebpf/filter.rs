//! In-kernel filtering from plugin subscriptions: turns the union of the loaded detectors'
//! subscriptions into the kernel's filter maps (`palisade_common::MAP_FILTER*`) and writes them
//! live. It owns the over-approximation rule and must never let the kernel drop an event some
//! subscription matches: the router still does the exact matching.
//!
//! Per kind: no subscription -> drop the kind; a subscription the kernel cannot narrow (no
//! kernel-checkable predicate for that kind) -> pass the kind; otherwise each subscription is
//! assigned ONE gate it is fully described by (path for file kinds, port for connect/listen,
//! else comm) and an event passes when any gate matches. A matching subscription's assigned
//! predicate holds, so its gate passes the event. exe and uid predicates are not checked in the
//! kernel. Lifecycle kinds (exec, fork, exit) always pass: the process cache needs them.
//! [`FilterPlan::admits`] is the reference model of the kernel programs' decision, for tests.
//!
//! Paths: the LPM trie (`FILTER_PATHS`) decides; before it the programs check a bitmap of the
//! entries' 8-byte heads (`FILTER_HEADS`, [`FilterPlan::heads`]), which rejects most paths no
//! entry can match without the trie walk. The heads are derived from the trie entries and only
//! ever say "maybe", so they narrow nothing the trie would pass.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use palisade_common as abi;

use crate::event::EventKind;
use crate::plugin::registry::PluginSet;
use crate::plugin::subscription::Subscription;

const KINDS: usize = abi::KIND_COUNT as usize;

/// Why the filter maps could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("eBPF filter map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> FilterError {
    move |source| FilterError::Map {
        map,
        source: Box::new(source),
    }
}

/// Kinds whose programs never filter (the process cache is fed by them).
fn is_lifecycle(kind: EventKind) -> bool {
    matches!(kind, EventKind::Exec | EventKind::Fork | EventKind::Exit)
}

/// Kinds whose kernel record carries every path `EventData::paths` yields for them.
fn has_path_gate(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::FileOpen
            | EventKind::FileRename
            | EventKind::FileUnlink
            | EventKind::FileChmod
            | EventKind::FileChown
            | EventKind::FileLink
            | EventKind::Mount
    )
}

/// Kinds whose kernel program knows the port `EventData::port` yields (accept's local port is
/// not known at the hook, so accept has no port gate).
fn has_port_gate(kind: EventKind) -> bool {
    matches!(kind, EventKind::NetConnect | EventKind::NetListen)
}

/// A string the kernel can compare byte for byte with what userspace will see: userspace
/// decodes lossily (U+FFFD may stand for any invalid bytes) and cuts at the first NUL.
fn usable(s: &str) -> bool {
    !s.contains('\u{FFFD}') && !s.contains('\0')
}

/// What the kernel programs see of one event (for the reference model).
#[derive(Debug, Clone, Default)]
pub struct KernelView<'a> {
    pub comm: &'a str,
    /// The paths the path gate looks at, as passed to the syscall.
    pub paths: Vec<&'a str>,
    /// `Some(port)` for an inet address; `None` for other families.
    pub port: Option<u16>,
}

/// Words in the `FILTER_HEADS` value as the host writes it: `PathHeads` as u64s (word 0 =
/// `flags | short_lens << 32`, then the bitmap), so no `unsafe impl Pod` is needed.
pub const HEADS_WORDS: usize = 1 + (abi::HEAD_BITS / 64) as usize;
const _: () = assert!(HEADS_WORDS * 8 == std::mem::size_of::<abi::PathHeads>());

/// The head of an absolute path's bytes (without its NUL) as the kernel computes it: the first
/// 8 bytes, little-endian, bytes from the NUL on cleared.
fn head_of(path: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = path.len().min(8);
    b[..n].copy_from_slice(&path[..n]);
    u64::from_le_bytes(b)
}

/// The filter maps' contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterPlan {
    /// `FILTER` word per kind.
    pub words: [u32; KINDS],
    /// LPM entries: prefix bytes (exact paths end with NUL) -> kind bitmask, ancestors folded.
    pub paths: BTreeMap<Vec<u8>, u32>,
    pub comms: BTreeMap<[u8; abi::COMM_LEN], u32>,
    pub ports: BTreeMap<u16, u32>,
}

impl Default for FilterPlan {
    fn default() -> Self {
        FilterPlan::pass_all()
    }
}

/// The gate one subscription is assigned to, for one kind.
enum Assigned {
    Path(Vec<Vec<u8>>),
    Port(Vec<u16>),
    Comm(Vec<[u8; abi::COMM_LEN]>),
    /// Nothing the kernel can check: every event of the kind must pass.
    Unconstrained,
}

fn assign(sub: &Subscription, kind: EventKind) -> Assigned {
    let has_paths = !sub.paths.is_empty() || !sub.path_prefixes.is_empty();
    if has_path_gate(kind)
        && has_paths
        && sub
            .paths
            .iter()
            .chain(&sub.path_prefixes)
            .all(|p| usable(p))
        && sub.path_prefixes.iter().all(|p| !p.is_empty())
    {
        let mut entries = Vec::new();
        for prefix in &sub.path_prefixes {
            // The kernel passes every relative path, so only absolute entries are needed.
            if prefix.starts_with('/') {
                let mut bytes = prefix.as_bytes().to_vec();
                bytes.truncate(abi::PATH_LEN);
                entries.push(bytes);
            }
        }
        for path in &sub.paths {
            if path.starts_with('/') {
                let mut bytes = path.as_bytes().to_vec();
                bytes.push(0);
                // Too long to end in the buffer: keep it as a (wider) prefix.
                bytes.truncate(abi::PATH_LEN);
                entries.push(bytes);
            }
        }
        return Assigned::Path(entries);
    }
    if has_port_gate(kind) && !sub.ports.is_empty() {
        return Assigned::Port(sub.ports.clone());
    }
    if !sub.comms.is_empty() && sub.comms.iter().all(|c| usable(c)) {
        // A comm longer than the kernel's 15 bytes never matches: it adds no entry.
        let keys = sub
            .comms
            .iter()
            .filter(|c| c.len() < abi::COMM_LEN)
            .map(|c| {
                let mut key = [0u8; abi::COMM_LEN];
                key[..c.len()].copy_from_slice(c.as_bytes());
                key
            })
            .collect();
        return Assigned::Comm(keys);
    }
    Assigned::Unconstrained
}

impl FilterPlan {
    /// Every kind passes (the maps' state at load).
    pub fn pass_all() -> Self {
        FilterPlan {
            words: [0; KINDS],
            paths: BTreeMap::new(),
            comms: BTreeMap::new(),
            ports: BTreeMap::new(),
        }
    }

    /// The plan for the union of `subscriptions`.
    pub fn from_subscriptions<'a>(
        subscriptions: impl IntoIterator<Item = &'a Subscription>,
    ) -> Self {
        let subs: Vec<&Subscription> = subscriptions.into_iter().collect();
        let mut plan = FilterPlan::pass_all();
        let mut path_kinds = 0u32;
        let mut comm_kinds = 0u32;
        for kind in EventKind::ALL {
            let k = kind as usize;
            let bit = 1u32 << k;
            if is_lifecycle(kind) {
                continue;
            }
            let mut word = abi::FILTER_DROP;
            let mut paths = Vec::new();
            let mut comms = Vec::new();
            let mut ports = Vec::new();
            for sub in subs.iter().filter(|s| s.kinds.contains(kind)) {
                word &= !abi::FILTER_DROP;
                match assign(sub, kind) {
                    Assigned::Path(p) => {
                        word |= abi::FILTER_GATE_PATH;
                        paths.extend(p);
                    }
                    Assigned::Port(p) => {
                        word |= abi::FILTER_GATE_PORT;
                        ports.extend(p);
                    }
                    Assigned::Comm(c) => {
                        word |= abi::FILTER_GATE_COMM;
                        comms.extend(c);
                    }
                    Assigned::Unconstrained => {
                        word = 0;
                        break;
                    }
                }
            }
            if let Some(w) = plan.words.get_mut(k) {
                *w = word;
            }
            if word & abi::FILTER_GATES == 0 {
                continue;
            }
            for p in paths {
                *plan.paths.entry(p).or_default() |= bit;
                path_kinds |= bit;
            }
            for c in comms {
                *plan.comms.entry(c).or_default() |= bit;
                comm_kinds |= bit;
            }
            for p in ports {
                *plan.ports.entry(p).or_default() |= bit;
            }
        }
        // Over capacity: those gates cannot be expressed, so their kinds pass everything.
        if plan.paths.len() > abi::FILTER_PATHS_MAX as usize {
            plan.ungate(path_kinds);
            plan.paths.clear();
        }
        if plan.comms.len() > abi::FILTER_COMMS_MAX as usize {
            plan.ungate(comm_kinds);
            plan.comms.clear();
        }
        plan.fold_ancestors();
        plan
    }

    /// The plan for a published plugin set (its detectors' subscriptions).
    pub fn from_plugin_set(set: &PluginSet) -> Self {
        FilterPlan::from_subscriptions(
            set.detectors
                .iter()
                .flat_map(|p| p.interest.subscriptions.iter()),
        )
    }

    fn ungate(&mut self, kinds: u32) {
        for (k, w) in self.words.iter_mut().enumerate() {
            if kinds & (1 << k) != 0 {
                *w = 0;
            }
        }
    }

    /// The trie answers with the longest matching entry only: give each entry the bits of
    /// every shorter entry that is a prefix of it.
    fn fold_ancestors(&mut self) {
        let snapshot = self.paths.clone();
        for (entry, mask) in self.paths.iter_mut() {
            for len in 1..entry.len() {
                if let Some(m) = entry.get(..len).and_then(|p| snapshot.get(p)) {
                    *mask |= m;
                }
            }
        }
    }

    /// The kernel programs' decision for an event of `kind` (reference model).
    pub fn admits(&self, kind: EventKind, view: &KernelView<'_>) -> bool {
        let word = self.words.get(kind as usize).copied().unwrap_or(0);
        if word & abi::FILTER_DROP != 0 {
            return false;
        }
        if word & abi::FILTER_GATES == 0 {
            return true;
        }
        let bit = 1u32 << kind as u32;
        if word & abi::FILTER_GATE_COMM != 0 {
            let mut key = [0u8; abi::COMM_LEN];
            let raw = view.comm.as_bytes();
            let n = raw.len().min(abi::COMM_LEN - 1);
            key[..n].copy_from_slice(&raw[..n]);
            if self.comms.get(&key).is_some_and(|m| m & bit != 0) {
                return true;
            }
        }
        if word & abi::FILTER_GATE_PATH != 0 && view.paths.iter().any(|p| self.path_hit(bit, p)) {
            return true;
        }
        if word & abi::FILTER_GATE_PORT != 0 {
            match view.port {
                None => return true,
                Some(port) if self.ports.get(&port).is_some_and(|m| m & bit != 0) => return true,
                Some(_) => {}
            }
        }
        false
    }

    fn path_hit(&self, bit: u32, path: &str) -> bool {
        if !path.starts_with('/') {
            return true;
        }
        let mut data = path.as_bytes().to_vec();
        data.truncate(abi::PATH_LEN - 1);
        if !FilterPlan::head_may_hit(&self.heads(), &data) {
            return false;
        }
        data.push(0);
        // Longest entry that is a prefix of the path bytes (with the NUL).
        (1..=data.len())
            .rev()
            .find_map(|len| data.get(..len).and_then(|p| self.paths.get(p)))
            .is_some_and(|m| m & bit != 0)
    }

    /// The `FILTER_HEADS` value for [`FilterPlan::paths`] (see `palisade_common::PathHeads`).
    pub fn heads(&self) -> abi::PathHeads {
        let mut heads = abi::PathHeads {
            flags: abi::HEADS_VALID,
            short_lens: 0,
            bits: [0; (abi::HEAD_BITS / 64) as usize],
        };
        let mut set = |head: u64, len: u32| {
            let bit = abi::head_hash(head, len) as usize;
            if let Some(word) = heads.bits.get_mut(bit / 64) {
                *word |= 1 << (bit % 64);
            }
        };
        let mut short_lens = 0u32;
        for entry in self.paths.keys() {
            let exact = entry.last() == Some(&0);
            if entry.len() >= 8 || exact {
                // An exact entry's bytes up to its NUL are the whole path: its head.
                let bytes = if exact {
                    &entry[..entry.len() - 1]
                } else {
                    &entry[..]
                };
                set(head_of(bytes), 8);
            } else if !entry.is_empty() {
                let len = entry.len() as u32;
                set(head_of(entry), len);
                short_lens |= 1 << len;
            }
        }
        heads.short_lens = short_lens;
        heads
    }

    /// The `FILTER_HEADS` value as written to the map.
    pub fn heads_words(&self) -> [u64; HEADS_WORDS] {
        let heads = self.heads();
        let mut words = [0u64; HEADS_WORDS];
        words[0] = u64::from(heads.flags) | u64::from(heads.short_lens) << 32;
        words[1..].copy_from_slice(&heads.bits);
        words
    }

    /// The kernel's prefilter for an absolute path (bytes without the NUL): false only when
    /// no entry can match it.
    pub fn head_may_hit(heads: &abi::PathHeads, path: &[u8]) -> bool {
        let bit = |head: u64, len: u32| {
            let b = abi::head_hash(head, len) as usize;
            heads
                .bits
                .get(b / 64)
                .is_some_and(|w| w & (1 << (b % 64)) != 0)
        };
        let head = head_of(path);
        if heads.flags & abi::HEADS_VALID == 0 || bit(head, 8) {
            return true;
        }
        (1..8u32).any(|len| {
            heads.short_lens & (1 << len) != 0 && bit(head & ((1u64 << (8 * len)) - 1), len)
        })
    }

    /// Kinds that pass everything, are gated, or are dropped (for logs).
    pub fn summary(&self) -> (usize, usize, usize) {
        let dropped = self
            .words
            .iter()
            .filter(|w| *w & abi::FILTER_DROP != 0)
            .count();
        let gated = self
            .words
            .iter()
            .filter(|w| *w & abi::FILTER_GATES != 0)
            .count();
        (KINDS - dropped - gated, gated, dropped)
    }
}

/// The filter maps of one loaded object.
pub struct FilterMaps {
    pub words: Array<MapData, u32>,
    pub paths: LpmTrie<MapData, [u8; abi::PATH_LEN], u32>,
    pub comms: BpfHashMap<MapData, [u8; abi::COMM_LEN], u32>,
    pub ports: Array<MapData, u32>,
    /// `FILTER_HEADS` (one element).
    pub heads: Array<MapData, [u64; HEADS_WORDS]>,
}

/// A cloneable handle that rewrites the kernel filter; every update is serialised.
#[derive(Clone)]
pub struct KernelFilter {
    inner: Arc<Mutex<(FilterMaps, FilterPlan)>>,
}

fn lpm_key(bytes: &[u8]) -> Key<[u8; abi::PATH_LEN]> {
    let mut data = [0u8; abi::PATH_LEN];
    let n = bytes.len().min(abi::PATH_LEN);
    data[..n].copy_from_slice(&bytes[..n]);
    Key::new((n * 8) as u32, data)
}

impl KernelFilter {
    /// A filter over `maps` (as loaded: everything passes).
    pub fn new(maps: FilterMaps) -> Self {
        KernelFilter {
            inner: Arc::new(Mutex::new((maps, FilterPlan::pass_all()))),
        }
    }

    /// The plan last written.
    pub fn current(&self) -> FilterPlan {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Writes `plan`. Safe against the programs running meanwhile: every changed kind is first
    /// opened (word 0), then the predicate maps change, then the final words go in, so no
    /// intermediate state drops more than both the old and the new plan would.
    pub fn apply(&self, plan: &FilterPlan) -> Result<(), FilterError> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (maps, old) = &mut *guard;
        if old == plan {
            return Ok(());
        }
        let entries_changed =
            old.paths != plan.paths || old.comms != plan.comms || old.ports != plan.ports;
        for k in 0..KINDS {
            let (was, will) = (old.words[k], plan.words[k]);
            if was != 0 && (was != will || entries_changed) {
                maps.words
                    .set(k as u32, 0, 0)
                    .map_err(map_err(abi::MAP_FILTER))?;
            }
        }
        // From here on a failure leaves those kinds open (passing everything): safe.
        old.words = [0; KINDS];
        for (bytes, mask) in &plan.paths {
            if old.paths.get(bytes) != Some(mask) {
                maps.paths
                    .insert(&lpm_key(bytes), mask, 0)
                    .map_err(map_err(abi::MAP_FILTER_PATHS))?;
            }
        }
        for bytes in old.paths.keys().filter(|b| !plan.paths.contains_key(*b)) {
            let _ = maps.paths.remove(&lpm_key(bytes));
        }
        if old.paths != plan.paths {
            // Every gated kind is open at this point, so no program reads the bitmap while
            // it is rewritten.
            maps.heads
                .set(0, plan.heads_words(), 0)
                .map_err(map_err(abi::MAP_FILTER_HEADS))?;
        }
        for (comm, mask) in &plan.comms {
            if old.comms.get(comm) != Some(mask) {
                maps.comms
                    .insert(comm, mask, 0)
                    .map_err(map_err(abi::MAP_FILTER_COMMS))?;
            }
        }
        for comm in old.comms.keys().filter(|c| !plan.comms.contains_key(*c)) {
            let _ = maps.comms.remove(comm);
        }
        for (port, mask) in &plan.ports {
            if old.ports.get(port) != Some(mask) {
                maps.ports
                    .set(u32::from(*port), mask, 0)
                    .map_err(map_err(abi::MAP_FILTER_PORTS))?;
            }
        }
        for port in old.ports.keys().filter(|p| !plan.ports.contains_key(*p)) {
            let _ = maps.ports.set(u32::from(*port), 0, 0);
        }
        old.paths = plan.paths.clone();
        old.comms = plan.comms.clone();
        old.ports = plan.ports.clone();
        for (k, word) in plan.words.iter().enumerate() {
            maps.words
                .set(k as u32, word, 0)
                .map_err(map_err(abi::MAP_FILTER))?;
        }
        old.words = plan.words;
        let (passed, gated, dropped) = plan.summary();
        tracing::info!(
            kinds_passed = passed,
            kinds_gated = gated,
            kinds_dropped = dropped,
            paths = plan.paths.len(),
            comms = plan.comms.len(),
            ports = plan.ports.len(),
            "kernel filter updated from plugin subscriptions"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::KindSet;

    fn kinds(k: &[EventKind]) -> KindSet {
        k.iter().copied().collect()
    }

    fn view<'a>(comm: &'a str, paths: &[&'a str], port: Option<u16>) -> KernelView<'a> {
        KernelView {
            comm,
            paths: paths.to_vec(),
            port,
        }
    }

    #[test]
    fn no_plugin_drops_every_gated_kind_but_lifecycle_passes() {
        let plan = FilterPlan::from_subscriptions([]);
        assert!(!plan.admits(EventKind::FileOpen, &view("cat", &["/etc/x"], None)));
        assert!(!plan.admits(EventKind::NetConnect, &view("cat", &[], Some(80))));
        for k in [EventKind::Exec, EventKind::Fork, EventKind::Exit] {
            assert!(plan.admits(k, &view("cat", &[], None)));
        }
        assert_eq!(FilterPlan::pass_all().summary(), (KINDS, 0, 0));
    }

    #[test]
    fn a_kind_without_predicates_passes_everything() {
        let subs = [
            Subscription {
                kinds: kinds(&[EventKind::FileOpen]),
                path_prefixes: vec!["/etc/".into()],
                ..Subscription::default()
            },
            Subscription {
                kinds: kinds(&[EventKind::FileOpen, EventKind::Ptrace]),
                ..Subscription::default()
            },
        ];
        let plan = FilterPlan::from_subscriptions(&subs);
        assert_eq!(plan.words[EventKind::FileOpen as usize], 0);
        assert!(plan.admits(EventKind::FileOpen, &view("x", &["/tmp/a"], None)));
        assert!(plan.admits(EventKind::Ptrace, &view("x", &[], None)));
        assert!(!plan.admits(EventKind::FileUnlink, &view("x", &["/tmp/a"], None)));
    }

    #[test]
    fn prefixes_exact_paths_relative_paths_and_ancestors() {
        let subs = [
            Subscription {
                kinds: kinds(&[EventKind::FileOpen]),
                path_prefixes: vec!["/etc/".into()],
                paths: vec!["/root/.bashrc".into()],
                ..Subscription::default()
            },
            Subscription {
                kinds: kinds(&[EventKind::FileUnlink]),
                path_prefixes: vec!["/etc/ssh/".into()],
                ..Subscription::default()
            },
        ];
        let plan = FilterPlan::from_subscriptions(&subs);
        let open = |p: &str| plan.admits(EventKind::FileOpen, &view("x", &[p], None));
        assert!(open("/etc/passwd"));
        // The longest match (/etc/ssh/, an unlink entry) carries the open bit of /etc/.
        assert!(open("/etc/ssh/sshd_config"));
        assert!(open("/root/.bashrc"));
        assert!(!open("/root/.bashrc2"));
        assert!(!open("/root/.bash"));
        assert!(!open("/tmp/x"));
        // Relative, empty: undecidable in the kernel.
        assert!(open("etc/passwd"));
        assert!(open(""));
        let unlink = |p: &str| plan.admits(EventKind::FileUnlink, &view("x", &[p], None));
        assert!(unlink("/etc/ssh/x"));
        assert!(!unlink("/etc/passwd"));
    }

    #[test]
    fn comm_and_port_gates() {
        let subs = [
            Subscription {
                kinds: kinds(&[EventKind::NetConnect, EventKind::Setuid]),
                ports: vec![4444],
                ..Subscription::default()
            },
            Subscription {
                kinds: kinds(&[EventKind::NetConnect, EventKind::Setuid]),
                comms: vec!["nc".into(), "a-very-long-command-name".into()],
                ..Subscription::default()
            },
        ];
        let plan = FilterPlan::from_subscriptions(&subs);
        let connect =
            |c: &str, p: Option<u16>| plan.admits(EventKind::NetConnect, &view(c, &[], p));
        assert!(connect("curl", Some(4444)));
        assert!(connect("nc", Some(80)));
        assert!(!connect("curl", Some(80)));
        // Unix sockets: no port in the kernel's view.
        assert!(connect("curl", None));
        // The port-only subscription has no gate for setuid: setuid passes everything.
        assert!(plan.admits(EventKind::Setuid, &view("curl", &[], None)));
    }

    /// The promise: whatever a subscription matches, the kernel lets through.
    #[test]
    fn never_drops_what_a_subscription_matches() {
        use crate::event::{ConnectionData, Event, EventData, FileOpenData, Process};
        let subs = vec![
            Subscription {
                kinds: kinds(&[EventKind::FileOpen, EventKind::FileRename]),
                paths: vec!["/etc/shadow".into(), "rel/file".into()],
                path_prefixes: vec!["/home/".into(), "/home/u/.ssh/".into()],
                comms: vec!["cat".into()],
                ..Subscription::default()
            },
            Subscription {
                kinds: kinds(&[EventKind::FileOpen, EventKind::NetConnect]),
                comms: vec!["bash".into()],
                ports: vec![22],
                ..Subscription::default()
            },
        ];
        let plan = FilterPlan::from_subscriptions(&subs);
        let comms = ["cat", "bash", "sh"];
        let paths = [
            "/etc/shadow",
            "/etc/shadowx",
            "/home/u/.ssh/id",
            "/home",
            "rel/file",
            "/tmp/a",
            "",
        ];
        for comm in comms {
            let process = Arc::new(Process {
                comm: comm.into(),
                ..Process::default()
            });
            for p in paths {
                let ev = Event {
                    ts_ns: 0,
                    process: process.clone(),
                    data: EventData::FileOpen(FileOpenData {
                        path: p.into(),
                        ..FileOpenData::default()
                    }),
                };
                let matched = subs.iter().any(|s| s.matches(&ev));
                assert!(
                    !matched || plan.admits(EventKind::FileOpen, &view(comm, &[p], None)),
                    "{comm} {p}"
                );
                for q in paths {
                    let ev = Event {
                        ts_ns: 0,
                        process: process.clone(),
                        data: EventData::FileRename {
                            from: p.into(),
                            to: q.into(),
                        },
                    };
                    let matched = subs.iter().any(|s| s.matches(&ev));
                    assert!(
                        !matched || plan.admits(EventKind::FileRename, &view(comm, &[p, q], None)),
                        "{comm} {p} -> {q}"
                    );
                }
            }
            for port in [22u16, 80] {
                let ev = Event {
                    ts_ns: 0,
                    process: process.clone(),
                    data: EventData::NetConnect(ConnectionData {
                        dport: port,
                        ..ConnectionData::default()
                    }),
                };
                let matched = subs.iter().any(|s| s.matches(&ev));
                assert!(
                    !matched || plan.admits(EventKind::NetConnect, &view(comm, &[], Some(port))),
                    "{comm} :{port}"
                );
            }
        }
        // And it does narrow: an unsubscribed path by an unsubscribed comm is dropped.
        assert!(!plan.admits(EventKind::FileOpen, &view("sh", &["/tmp/a"], None)));
    }

    fn open_sub(paths: &[&str], prefixes: &[&str]) -> Subscription {
        Subscription {
            kinds: kinds(&[EventKind::FileOpen]),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            path_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            ..Subscription::default()
        }
    }

    fn bit_set(heads: &abi::PathHeads, head: &[u8], len: u32) -> bool {
        let b = abi::head_hash(head_of(head), len) as usize;
        heads.bits[b / 64] & (1 << (b % 64)) != 0
    }

    /// Mixed exact and prefix entries, long and shorter than a head: which bits and lengths
    /// the heads map holds, and what it lets through.
    #[test]
    fn heads_of_mixed_exact_and_prefix_entries() {
        let plan = FilterPlan::from_subscriptions(&[
            open_sub(
                &["/etc/shadow", "/a", "rel/x"],
                &["/etc/sudoers.d/", "/tmp/"],
            ),
            Subscription {
                kinds: kinds(&[EventKind::FileUnlink]),
                paths: vec!["/etc/passwd".into()],
                ..Subscription::default()
            },
        ]);
        let entries: Vec<&[u8]> = plan.paths.keys().map(Vec::as_slice).collect();
        assert_eq!(
            entries,
            [
                &b"/a\0"[..],
                b"/etc/passwd\0",
                b"/etc/shadow\0",
                b"/etc/sudoers.d/",
                b"/tmp/"
            ]
        );
        let heads = plan.heads();
        assert_eq!(heads.flags, abi::HEADS_VALID);
        // Only the 5-byte prefix is shorter than a head; exact "/a" is a whole (padded) head.
        assert_eq!(heads.short_lens, 1 << 5);
        for (head, len) in [
            (&b"/a"[..], 8),
            (b"/etc/pas", 8),
            (b"/etc/sha", 8),
            (b"/etc/sud", 8),
            (b"/tmp/", 5),
        ] {
            assert!(bit_set(&heads, head, len), "{head:?}/{len}");
        }
        assert_eq!(
            heads.bits.iter().map(|w| w.count_ones()).sum::<u32>(),
            5,
            "one bit per entry (no collision among these)"
        );
        let words = plan.heads_words();
        assert_eq!(words[0], u64::from(abi::HEADS_VALID) | (1 << 5) << 32);
        assert_eq!(&words[1..], &heads.bits[..]);

        let may = |p: &str| FilterPlan::head_may_hit(&heads, p.as_bytes());
        for p in [
            "/etc/shadow",
            "/etc/shadowx",
            "/etc/sudoers.d/x",
            "/tmp/",
            "/tmp/x/y",
            "/a",
            "/etc/passwd",
        ] {
            assert!(may(p), "{p}");
        }
        // Different heads: rejected before the trie.
        for p in [
            "/usr/lib/libc.so.6",
            "/ab",
            "/a/b",
            "/tmp",
            "/var/tmp/x",
            "/proc/self/stat",
        ] {
            assert!(!may(p), "{p}");
        }
        // Same head as an entry but no match: the trie rejects.
        let open = |p: &str| plan.admits(EventKind::FileOpen, &view("x", &[p], None));
        assert!(may("/etc/shadoq"));
        assert!(!open("/etc/shadoq"));
        assert!(open("/etc/shadow") && open("/tmp/q") && open("/a") && open("rel/y"));
        assert!(!open("/ab") && !open("/usr/lib/libc.so.6"));
        // A map nobody wrote (flags clear) sends everything to the trie.
        let fresh = abi::PathHeads {
            flags: 0,
            short_lens: 0,
            bits: [0; (abi::HEAD_BITS / 64) as usize],
        };
        assert!(FilterPlan::head_may_hit(&fresh, b"/usr/lib/x"));
    }

    /// The prefilter never rejects what the trie matches: every prefix and extension of every
    /// entry, for entry sets with short and long, exact and prefix entries.
    #[test]
    fn heads_never_reject_a_trie_match() {
        let sets: [(&[&str], &[&str]); 4] = [
            (&["/etc/shadow", "/x", "/etc/a"], &["/", "/ro"]),
            (
                &["/etc/ssh/sshd_config", "/abcdefg", "/abcdef"],
                &["/abcdefgh", "/ab"],
            ),
            (&[], &["/home/", "/h", "/home/u/.ssh/"]),
            (&["/1234567", "/123456"], &["/12345678/"]),
        ];
        for (paths, prefixes) in sets {
            let plan = FilterPlan::from_subscriptions(&[open_sub(paths, prefixes)]);
            let heads = plan.heads();
            let mut candidates: Vec<String> = Vec::new();
            for e in paths.iter().chain(prefixes.iter()) {
                for cut in 1..=e.len() {
                    candidates.push(e[..cut].to_string());
                }
                for tail in ["", "x", "/", "/deeper/file", "0123456789"] {
                    candidates.push(format!("{e}{tail}"));
                }
            }
            for c in &candidates {
                let mut data = c.as_bytes().to_vec();
                data.push(0);
                let trie = (1..=data.len()).any(|len| plan.paths.contains_key(&data[..len]));
                if trie {
                    assert!(
                        FilterPlan::head_may_hit(&heads, c.as_bytes()),
                        "{c} matches an entry but the heads reject it ({paths:?} {prefixes:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn lossy_strings_and_overflow_fall_back_to_passing() {
        let subs = [Subscription {
            kinds: kinds(&[EventKind::FileOpen]),
            path_prefixes: vec!["/bad\u{FFFD}/".into()],
            ..Subscription::default()
        }];
        let plan = FilterPlan::from_subscriptions(&subs);
        assert_eq!(plan.words[EventKind::FileOpen as usize], 0);
        let many: Vec<String> = (0..abi::FILTER_PATHS_MAX + 1)
            .map(|i| format!("/p{i}/"))
            .collect();
        let subs = [Subscription {
            kinds: kinds(&[EventKind::FileOpen]),
            path_prefixes: many,
            ..Subscription::default()
        }];
        let plan = FilterPlan::from_subscriptions(&subs);
        assert_eq!(plan.words[EventKind::FileOpen as usize], 0);
        assert!(plan.paths.is_empty());
    }
}
