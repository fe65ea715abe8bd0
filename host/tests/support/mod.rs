//! Shared harness for the host integration tests: builds the guest plugins once, assembles a
//! daemon in a temporary directory with an in-memory alert output, and makes events.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade::config::Config;
use palisade::daemon::{Daemon, Pipeline};
use palisade::event::{Event, EventData, ExecData, FileOpenData, Process};
use palisade::output::{writer_output, Format};
use serde_json::Value;

pub fn built() -> &'static xtask::BuiltPlugins {
    xtask::build_plugins_once().expect("guest plugins build")
}

/// A test plugin's component path (target/test-plugins/<name>.wasm).
pub fn test_plugin(name: &str) -> PathBuf {
    built()
        .test_plugin(name)
        .unwrap_or_else(|| panic!("no test plugin {name}"))
        .wasm
        .clone()
}

/// A first-party plugin's component path (target/plugins/<name>.wasm).
pub fn plugin(name: &str) -> PathBuf {
    built()
        .plugin(name)
        .unwrap_or_else(|| panic!("no plugin {name}"))
        .wasm
        .clone()
}

/// Shared compile cache so each test binary compiles each component once.
pub fn cache_dir() -> PathBuf {
    xtask::workspace_root().join("target/test-cache")
}

/// An in-memory alert sink, readable while the pipeline runs.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn alerts(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("alert line is JSON"))
            .collect()
    }

    pub fn with_rule(&self, rule: &str) -> Vec<Value> {
        self.alerts()
            .into_iter()
            .filter(|a| a["rule"] == rule)
            .collect()
    }

    /// Waits until `pred` holds for the captured alerts, or panics after `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let alerts = self.alerts();
            if pred(&alerts) {
                return alerts;
            }
            if Instant::now() > deadline {
                let rules: Vec<String> = alerts.iter().map(|a| a["rule"].to_string()).collect();
                panic!("timed out waiting for {what}; alerts so far: {rules:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub daemon: Daemon,
    pub captured: Captured,
}

impl Harness {
    /// A daemon whose config is the embedded defaults plus `extra` TOML (sections merged by
    /// the config loader), plugins in a temp dir, a shared compile cache, and an audit log.
    pub fn new(extra: &str) -> Self {
        Self::build(extra, 300)
    }

    /// A harness whose idle instances are released after `secs` seconds.
    pub fn with_idle_release(secs: u64) -> Self {
        Self::build("", secs)
    }

    fn build(extra: &str, idle_release_secs: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let text = format!(
            "version = 1\nhostname = \"test-host\"\n{extra}\n[plugins]\ndir = {plugins:?}\ncache_dir = {cache:?}\nwatch = false\nidle_release_secs = {idle_release_secs}\n\n[actions]\naudit_log = {audit:?}\n",
            plugins = plugins.display().to_string(),
            cache = cache_dir().display().to_string(),
            audit = dir.path().join("audit.jsonl").display().to_string(),
        );
        let config = Config::from_toml_str(&text, "test.toml")
            .unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
        let daemon = Daemon::build(config, false).unwrap();
        Self {
            dir,
            daemon,
            captured: Captured::default(),
        }
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// Copies `wasm` into the plugin dir as `<stem>.wasm`, with an optional sidecar.
    pub fn install(&self, wasm: &Path, stem: &str, sidecar: Option<&str>) {
        std::fs::copy(wasm, self.plugins_dir().join(format!("{stem}.wasm"))).unwrap();
        if let Some(text) = sidecar {
            std::fs::write(self.plugins_dir().join(format!("{stem}.toml")), text).unwrap();
        }
    }

    /// Loads the plugin dir once; panics unless exactly `expect_ok` loaded.
    pub fn load(&self, expect_ok: usize) {
        let (ok, failed) = self.daemon.load_dir(&self.plugins_dir()).unwrap();
        assert_eq!(ok, expect_ok, "{failed} plugin(s) failed to load");
    }

    pub fn start(&self) -> Pipeline {
        let out = writer_output(self.captured.clone(), "captured", Format::Json);
        self.daemon.start_pipeline("test", vec![out]).unwrap()
    }

    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

pub fn process(pid: u32, comm: &str, exe: &str) -> Arc<Process> {
    Arc::new(Process {
        pid,
        tid: pid,
        ppid: 1,
        comm: comm.into(),
        exe: exe.into(),
        args: vec![comm.into()],
        start_ns: u64::from(pid) * 1000,
        ..Process::default()
    })
}

pub fn open_event(ts_ns: u64, process: &Arc<Process>, path: &str) -> Event {
    Event {
        ts_ns,
        process: Arc::clone(process),
        data: EventData::FileOpen(FileOpenData {
            path: path.into(),
            ..FileOpenData::default()
        }),
    }
}

pub fn exec_event(ts_ns: u64, process: &Arc<Process>, filename: &str, args: &[&str]) -> Event {
    Event {
        ts_ns,
        process: Arc::clone(process),
        data: EventData::Exec(ExecData {
            filename: filename.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            args_truncated: false,
        }),
    }
}
