//! The plugin directory watcher against a real directory: what each kind of change on disk turns
//! into on the change channel, and how fast. File contents are fake component bytes: the watcher
//! does not validate components, the registry does.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions unwrap like the tests do"
)]

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Receiver;
use palisade::reload::{
    initial_units, reconcile, AppliedUnit, PluginChange, ReloadError, UnitSnapshot, WatchSettings,
    Watcher,
};

/// The bound: a change on disk takes effect within this.
const TAKES_EFFECT: Duration = Duration::from_secs(1);
/// Longer than debounce + settle + a poll with the default settings, with room for a busy box.
const QUIET: Duration = Duration::from_millis(900);

fn start(dir: &Path) -> (Watcher, Receiver<PluginChange>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let watcher = Watcher::spawn(dir.to_path_buf(), WatchSettings::default(), tx).unwrap();
    (watcher, rx)
}

fn describe(change: &PluginChange) -> String {
    match change {
        PluginChange::Upsert(snapshot) => format!(
            "upsert {} ({} bytes, sidecar {:?})",
            snapshot.stem,
            snapshot.wasm_bytes.len(),
            snapshot.sidecar_text
        ),
        PluginChange::Remove { stem } => format!("remove {stem}"),
    }
}

fn next_change(rx: &Receiver<PluginChange>, within: Duration) -> PluginChange {
    rx.recv_timeout(within)
        .unwrap_or_else(|_| panic!("no plugin change within {within:?}"))
}

fn expect_upsert(rx: &Receiver<PluginChange>, within: Duration) -> UnitSnapshot {
    match next_change(rx, within) {
        PluginChange::Upsert(snapshot) => snapshot,
        other => panic!("expected an upsert, got {}", describe(&other)),
    }
}

fn expect_nothing(rx: &Receiver<PluginChange>, quiet: Duration) {
    if let Ok(change) = rx.recv_timeout(quiet) {
        panic!("expected no change, got {}", describe(&change));
    }
}

/// Writes to a hidden temporary name, then renames into place, as deploy tools do.
fn atomic_write(dir: &Path, name: &str, contents: &[u8]) {
    let temp = dir.join(format!(".{name}.incoming"));
    fs::write(&temp, contents).unwrap();
    fs::rename(&temp, dir.join(name)).unwrap();
}

fn fake_component(tag: &str, len: usize) -> Vec<u8> {
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.extend(tag.bytes().cycle().take(len));
    bytes
}

/// Starts on a directory with `stem.wasm` (and sidecar) and consumes the initial upsert.
fn start_with_unit(
    dir: &Path,
    stem: &str,
    wasm: &[u8],
    sidecar: Option<&str>,
) -> (Watcher, Receiver<PluginChange>) {
    fs::write(dir.join(format!("{stem}.wasm")), wasm).unwrap();
    if let Some(text) = sidecar {
        fs::write(dir.join(format!("{stem}.toml")), text).unwrap();
    }
    let (watcher, rx) = start(dir);
    let initial = expect_upsert(&rx, TAKES_EFFECT);
    assert_eq!(initial.stem, stem);
    assert_eq!(&*initial.wasm_bytes, wasm);
    (watcher, rx)
}

#[test]
fn initial_scan_emits_every_unit() {
    let dir = tempfile::tempdir().unwrap();
    let a = fake_component("a", 1000);
    let b = fake_component("b", 2000);
    fs::write(dir.path().join("a.wasm"), &a).unwrap();
    fs::write(dir.path().join("a.toml"), "version = 1\n").unwrap();
    fs::write(dir.path().join("b.wasm"), &b).unwrap();
    fs::write(dir.path().join("orphan.toml"), "version = 1\n").unwrap();
    fs::write(dir.path().join("README.md"), "not a plugin").unwrap();

    let (_watcher, rx) = start(dir.path());
    let mut seen = [
        expect_upsert(&rx, TAKES_EFFECT),
        expect_upsert(&rx, TAKES_EFFECT),
    ];
    seen.sort_by(|x, y| x.stem.cmp(&y.stem));
    assert_eq!(seen[0].stem, "a");
    assert_eq!(&*seen[0].wasm_bytes, a.as_slice());
    assert_eq!(seen[0].sidecar_text.as_deref(), Some("version = 1\n"));
    assert_eq!(
        seen[0].sidecar_path(),
        Some(dir.path().join("a.toml").as_path())
    );
    assert_eq!(seen[1].stem, "b");
    assert_eq!(&*seen[1].wasm_bytes, b.as_slice());
    assert!(seen[1].sidecar.is_none() && seen[1].sidecar_text.is_none());
    // The hash is of exactly the bytes handed over.
    use sha2::Digest;
    let hash: [u8; 32] = sha2::Sha256::digest(&*seen[1].wasm_bytes).into();
    assert_eq!(seen[1].wasm_hash, hash);
    expect_nothing(&rx, QUIET);
}

#[test]
fn atomic_rename_adds_a_plugin_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (_watcher, rx) = start(dir.path());
    expect_nothing(&rx, Duration::from_millis(400));

    let bytes = fake_component("new", 50_000);
    let written = Instant::now();
    atomic_write(dir.path(), "new.wasm", &bytes);
    let snapshot = expect_upsert(&rx, TAKES_EFFECT);
    assert!(
        written.elapsed() < TAKES_EFFECT,
        "took {:?}",
        written.elapsed()
    );
    assert_eq!(snapshot.stem, "new");
    assert_eq!(snapshot.wasm, dir.path().join("new.wasm"));
    assert_eq!(&*snapshot.wasm_bytes, bytes.as_slice());
    expect_nothing(&rx, QUIET);
}

#[test]
fn atomic_rename_replaces_a_plugin_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (_watcher, rx) = start_with_unit(dir.path(), "p", &fake_component("v1", 100), None);
    let v2 = fake_component("v2", 100);
    let written = Instant::now();
    atomic_write(dir.path(), "p.wasm", &v2);
    let snapshot = expect_upsert(&rx, TAKES_EFFECT);
    assert!(
        written.elapsed() < TAKES_EFFECT,
        "took {:?}",
        written.elapsed()
    );
    assert_eq!(&*snapshot.wasm_bytes, v2.as_slice());
    expect_nothing(&rx, QUIET);
}

#[test]
fn slow_in_place_write_is_loaded_once_and_only_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (_watcher, rx) = start(dir.path());
    expect_nothing(&rx, Duration::from_millis(300));

    let full = fake_component("slow", 200_000);
    let (first, rest) = full.split_at(full.len() / 2);
    let mut file = File::create(dir.path().join("slow.wasm")).unwrap();
    file.write_all(first).unwrap();
    file.sync_all().unwrap();
    // Longer than debounce + settle: the size and times are stable, but the writer is not done.
    sleep(Duration::from_millis(400));
    file.write_all(rest).unwrap();
    let closed = Instant::now();
    drop(file);

    let snapshot = expect_upsert(&rx, TAKES_EFFECT);
    assert!(
        closed.elapsed() < TAKES_EFFECT,
        "took {:?}",
        closed.elapsed()
    );
    assert_eq!(
        snapshot.wasm_bytes.len(),
        full.len(),
        "a half-written file was loaded"
    );
    assert_eq!(&*snapshot.wasm_bytes, full.as_slice());
    expect_nothing(&rx, QUIET);
}

#[test]
fn write_in_chunks_over_seconds_is_loaded_once_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (_watcher, rx) =
        start_with_unit(dir.path(), "p", &fake_component("v1", 100), Some("a = 1\n"));

    let full = fake_component("chunked", 100_000);
    let mut file = File::create(dir.path().join("p.wasm")).unwrap();
    for chunk in full.chunks(full.len() / 5) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        sleep(Duration::from_millis(350));
    }
    drop(file);

    let snapshot = expect_upsert(&rx, TAKES_EFFECT);
    assert_eq!(&*snapshot.wasm_bytes, full.as_slice());
    assert_eq!(snapshot.sidecar_text.as_deref(), Some("a = 1\n"));
    expect_nothing(&rx, QUIET);
}

#[test]
fn replacing_only_the_sidecar_sends_the_new_text() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = fake_component("p", 500);
    let (_watcher, rx) = start_with_unit(dir.path(), "p", &wasm, Some("[config]\nlevel = 1\n"));

    atomic_write(dir.path(), "p.toml", b"[config]\nlevel = 2\n");
    let snapshot = expect_upsert(&rx, TAKES_EFFECT);
    assert_eq!(
        snapshot.sidecar_text.as_deref(),
        Some("[config]\nlevel = 2\n")
    );
    assert_eq!(&*snapshot.wasm_bytes, wasm.as_slice());
    expect_nothing(&rx, QUIET);

    // Edited in place, as an editor without backup files would.
    fs::write(dir.path().join("p.toml"), "[config]\nlevel = 3\n").unwrap();
    let snapshot = expect_upsert(&rx, TAKES_EFFECT);
    assert_eq!(
        snapshot.sidecar_text.as_deref(),
        Some("[config]\nlevel = 3\n")
    );
    expect_nothing(&rx, QUIET);
}

#[test]
fn deleting_the_sidecar_upserts_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_watcher, rx) = start_with_unit(dir.path(), "p", b"wasm", Some("a = 1\n"));
    fs::remove_file(dir.path().join("p.toml")).unwrap();
    let snapshot = expect_upsert(&rx, TAKES_EFFECT);
    assert_eq!(snapshot.stem, "p");
    assert!(snapshot.sidecar.is_none() && snapshot.sidecar_text.is_none());
    expect_nothing(&rx, QUIET);
}

#[test]
fn deleting_the_wasm_removes_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let (_watcher, rx) = start_with_unit(dir.path(), "p", b"wasm", Some("a = 1\n"));
    let deleted = Instant::now();
    fs::remove_file(dir.path().join("p.wasm")).unwrap();
    match next_change(&rx, TAKES_EFFECT) {
        PluginChange::Remove { stem } => assert_eq!(stem, "p"),
        other => panic!("expected a remove, got {}", describe(&other)),
    }
    assert!(deleted.elapsed() < TAKES_EFFECT);
    // The sidecar left behind is not a plugin; putting the wasm back loads both again.
    expect_nothing(&rx, QUIET);
    atomic_write(dir.path(), "p.wasm", b"wasm");
    let snapshot = expect_upsert(&rx, TAKES_EFFECT);
    assert_eq!(snapshot.sidecar_text.as_deref(), Some("a = 1\n"));
}

#[test]
fn touching_without_a_content_change_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = fake_component("same", 4096);
    let (_watcher, rx) = start_with_unit(dir.path(), "p", &wasm, Some("a = 1\n"));

    let later = SystemTime::now() + Duration::from_secs(60);
    File::options()
        .write(true)
        .open(dir.path().join("p.wasm"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    fs::write(dir.path().join("p.toml"), "a = 1\n").unwrap();
    atomic_write(dir.path(), "p.wasm", &wasm);
    expect_nothing(&rx, QUIET);
}

#[test]
fn hidden_temp_and_other_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (_watcher, rx) = start(dir.path());
    expect_nothing(&rx, Duration::from_millis(300));
    for name in [
        ".hidden.wasm",
        ".p.wasm.swp",
        "p.wasm.swp",
        "p.wasm~",
        "p.wasm.tmp",
        "p.wasm.part",
        "p.toml~",
        "notes.txt",
        "p.so",
    ] {
        fs::write(dir.path().join(name), b"junk").unwrap();
    }
    fs::create_dir(dir.path().join("sub.wasm")).unwrap();
    fs::create_dir(dir.path().join("nested")).unwrap();
    fs::write(dir.path().join("nested").join("q.wasm"), b"junk").unwrap();
    // A sidecar alone is not a plugin either.
    fs::write(dir.path().join("lonely.toml"), "a = 1\n").unwrap();
    expect_nothing(&rx, QUIET);
}

#[test]
fn a_burst_of_writes_is_one_upsert_of_the_last_content() {
    let dir = tempfile::tempdir().unwrap();
    let (_watcher, rx) = start_with_unit(dir.path(), "p", &fake_component("v0", 1000), None);
    let mut last = Vec::new();
    for version in 1..=5 {
        last = fake_component(&format!("v{version}"), 1000 + version * 10);
        fs::write(dir.path().join("p.wasm"), &last).unwrap();
        sleep(Duration::from_millis(20));
    }
    let snapshot = expect_upsert(&rx, TAKES_EFFECT);
    assert_eq!(&*snapshot.wasm_bytes, last.as_slice());
    expect_nothing(&rx, QUIET);
}

#[test]
fn a_sidecar_written_before_its_wasm_is_loaded_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_watcher, rx) = start(dir.path());
    expect_nothing(&rx, Duration::from_millis(300));
    atomic_write(dir.path(), "p.toml", b"a = 1\n");
    expect_nothing(&rx, Duration::from_millis(500));
    atomic_write(dir.path(), "p.wasm", b"wasm");
    let snapshot = expect_upsert(&rx, TAKES_EFFECT);
    assert_eq!(snapshot.sidecar_text.as_deref(), Some("a = 1\n"));
    expect_nothing(&rx, QUIET);
}

#[test]
fn a_bad_sidecar_is_skipped_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("good.wasm"), b"good").unwrap();
    fs::write(dir.path().join("bad.wasm"), b"bad").unwrap();
    fs::write(dir.path().join("bad.toml"), [0xff, 0xfe]).unwrap();
    let (_watcher, rx) = start(dir.path());
    assert_eq!(expect_upsert(&rx, TAKES_EFFECT).stem, "good");
    expect_nothing(&rx, QUIET);
    atomic_write(dir.path(), "bad.toml", b"a = 1\n");
    let snapshot = expect_upsert(&rx, TAKES_EFFECT);
    assert_eq!(snapshot.stem, "bad");
    assert_eq!(snapshot.sidecar_text.as_deref(), Some("a = 1\n"));
}

#[test]
fn a_missing_directory_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-plugins");
    let (tx, _rx) = crossbeam_channel::unbounded();
    let error = Watcher::spawn(missing.clone(), WatchSettings::default(), tx).unwrap_err();
    assert!(matches!(error, ReloadError::MissingDir { .. }), "{error}");
    assert!(
        error.to_string().contains(&*missing.to_string_lossy()),
        "{error}"
    );
    let error = initial_units(&missing).unwrap_err();
    assert!(
        error.to_string().contains(&*missing.to_string_lossy()),
        "{error}"
    );
}

#[test]
fn a_deleted_directory_keeps_the_plugins_and_is_picked_up_again() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("plugins");
    fs::create_dir(&dir).unwrap();
    let (_watcher, rx) = start_with_unit(&dir, "p", b"v1", None);

    fs::remove_dir_all(&dir).unwrap();
    // Losing the directory is not "every plugin was deleted".
    expect_nothing(&rx, Duration::from_millis(1200));

    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("p.wasm"), b"v1").unwrap();
    atomic_write(&dir, "q.wasm", b"q1");
    let snapshot = expect_upsert(&rx, Duration::from_secs(2));
    assert_eq!(
        snapshot.stem, "q",
        "p is unchanged and must not be sent again"
    );
    expect_nothing(&rx, QUIET);

    // The new directory is watched, not just rescanned.
    let written = Instant::now();
    atomic_write(&dir, "p.wasm", b"v2");
    let snapshot = expect_upsert(&rx, TAKES_EFFECT);
    assert!(written.elapsed() < TAKES_EFFECT);
    assert_eq!(&*snapshot.wasm_bytes, b"v2");
}

#[test]
fn stopping_ends_the_thread_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let (watcher, rx) = start_with_unit(dir.path(), "p", b"wasm", None);
    let stopping = Instant::now();
    watcher.stop();
    assert!(stopping.elapsed() < Duration::from_millis(500));
    // The thread held the only sender: the channel is closed once it has ended.
    fs::write(dir.path().join("p.wasm"), b"changed").unwrap();
    assert!(matches!(
        rx.recv_timeout(QUIET),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected)
    ));
}

#[test]
fn a_receiver_that_goes_away_stops_the_watcher() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("p.wasm"), b"wasm").unwrap();
    let (tx, rx) = crossbeam_channel::bounded(0);
    let watcher = Watcher::spawn(dir.path().to_path_buf(), WatchSettings::default(), tx).unwrap();
    drop(rx);
    sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    drop(watcher);
    assert!(stopping.elapsed() < Duration::from_millis(500));
}

#[test]
fn one_shot_load_and_reconcile() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.wasm"), b"a").unwrap();
    fs::write(dir.path().join("a.toml"), "x = 1\n").unwrap();
    fs::write(dir.path().join("b.wasm"), b"b").unwrap();
    fs::write(dir.path().join(".c.wasm"), b"c").unwrap();
    // A unit that cannot be read is left out (and logged), not fatal for the others.
    fs::write(dir.path().join("d.wasm"), b"d").unwrap();
    fs::write(dir.path().join("d.toml"), [0xff, 0xfe]).unwrap();
    let units = initial_units(dir.path()).unwrap();
    let stems: Vec<_> = units.iter().map(|unit| unit.stem.as_str()).collect();
    assert_eq!(stems, ["a", "b"]);
    assert_eq!(units[0].sidecar_text.as_deref(), Some("x = 1\n"));

    let applied = units
        .iter()
        .map(|unit| (unit.stem.clone(), AppliedUnit::from(unit)))
        .collect();
    assert!(reconcile(&applied, dir.path()).unwrap().is_empty());
    fs::write(dir.path().join("a.toml"), "x = 2\n").unwrap();
    fs::remove_file(dir.path().join("b.wasm")).unwrap();
    fs::remove_file(dir.path().join("d.wasm")).unwrap();
    let changes: Vec<_> = reconcile(&applied, dir.path())
        .unwrap()
        .iter()
        .map(describe)
        .collect();
    assert_eq!(
        changes,
        ["upsert a (1 bytes, sidecar Some(\"x = 2\\n\"))", "remove b"]
    );
}
