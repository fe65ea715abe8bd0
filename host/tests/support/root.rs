//! Root detection for the tests that need the real kernel (eBPF, fanotify, cgroups, signals).
//! Shared by path (`#[path = "support/root.rs"] mod root;`) so test binaries that do not use the
//! plugin harness in `support/mod.rs` need not build it. A skip is never silent: it is written
//! to the stderr handle directly (libtest captures `eprintln!` of passing tests) and counted.
#![allow(dead_code)]

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

static SKIPS: AtomicUsize = AtomicUsize::new(0);

/// Whether this process runs with effective uid 0 (read from /proc, no libc needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// `true` when `test` must be skipped because it needs root for `needs`; says so loudly, with
/// a running count for the binary.
pub fn skip_unless_root(test: &str, needs: &str) -> bool {
    if is_root() {
        return false;
    }
    let n = SKIPS.fetch_add(1, Ordering::SeqCst) + 1;
    let line = format!(
        "SKIPPED (needs root): {test} {needs} [{n} test(s) skipped so far in this binary]\n"
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
    true
}
