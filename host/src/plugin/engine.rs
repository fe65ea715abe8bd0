//! The one wasmtime engine: pooling allocator, epoch interruption driven by a ticker thread, no
//! async support (cheaper calls), and an on-disk cache of compiled components keyed by content
//! hash so an unchanged plugin loads in milliseconds.
//!
//! Must not: run plugin code (that is `instance`), or know about routing.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{detector, responder};
use super::host_impl::HostState;

/// Length of one epoch tick; deadlines are expressed in ticks of this length.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Between calls the ticker only advances the epoch every `EPOCH_IDLE_TICK`: a lightly loaded
/// daemon then wakes 50x less often (a free-running 1 kHz ticker was ~3 % of a core, and on
/// this 2-vCPU VM each wake-up costs tens of microseconds taken from the workload beside the
/// daemon). A deadline is never shorter than its ticks minus one (a call that starts between
/// idle ticks sees at most one of them, then 1 ms ticks while it runs), and at most one idle
/// tick longer: a runaway call is stopped within its deadline + 50 ms.
const EPOCH_IDLE_TICK: Duration = Duration::from_millis(50);
/// Idle ticks after which the ticker parks until the next call (a second with no call).
const IDLE_TICKS_BEFORE_PARK: u32 = 20;

/// Tells the epoch ticker whether plugin code is running, so it ticks every [`EPOCH_TICK`]
/// only while some call runs, every [`EPOCH_IDLE_TICK`] between calls, and parks after
/// [`IDLE_TICKS_BEFORE_PARK`] idle ticks. Every guest call holds a [`Running`] guard (an atomic
/// increment; a syscall only when the ticker is parked). A slow or parked ticker cannot
/// starve a deadline: deadlines are set relative to the epoch when the call starts, and the
/// ticker runs at full rate for as long as any call is running.
#[derive(Debug, Default)]
pub struct TickerGate {
    running: AtomicUsize,
    parked: AtomicBool,
    thread: OnceLock<Thread>,
}

impl TickerGate {
    /// Marks guest code as running until the guard drops.
    pub fn enter(&self) -> Running<'_> {
        // SeqCst pairs with the ticker's store of `parked` then load of `running`: either it
        // sees this call and stays awake, or this call sees it parked and wakes it.
        self.running.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
        Running(self)
    }

    fn idle(&self) -> bool {
        self.running.load(Ordering::SeqCst) == 0
    }
}

/// Guest code is running (see [`TickerGate`]).
pub struct Running<'a>(&'a TickerGate);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Upper bound on any plugin's linear memory; per-plugin limits are enforced below this by
/// `StoreLimits`. The pooling allocator reserves address space (not memory) for it.
pub const MAX_PLUGIN_MEMORY_BYTES: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot configure the wasmtime engine: {0:#}")]
    Config(wasmtime::Error),
    #[error("cannot create the component cache directory {path}: {source}")]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a valid WebAssembly component: {reason:#}")]
    Compile {
        file: String,
        reason: wasmtime::Error,
    },
    #[error("cannot link the host interfaces: {0:#}")]
    Link(wasmtime::Error),
}

/// The shared engine, linkers for both worlds and the compile cache.
pub struct PluginEngine {
    engine: wasmtime::Engine,
    detector_linker: Linker<HostState>,
    responder_linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    compat_tag: String,
    ticker: Option<Ticker>,
    /// Wakes the ticker when guest code starts running (shared with every instance).
    gate: Arc<TickerGate>,
}

struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

impl PluginEngine {
    /// Builds the engine. `cache_dir` of `None` disables the on-disk compile cache.
    pub fn new(cache_dir: Option<&Path>) -> Result<Self, EngineError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // No component-model-async: each sync call is ~0.4 µs cheaper (measured, wasmtime 48).
        config.concurrency_support(false);
        // Profiling aid only (perf needs a map to name JIT code); changes nothing else.
        if std::env::var_os("PALISADE_WASM_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(2_000)
            .total_core_instances(20_000)
            .total_memories(4_000)
            .total_tables(4_000)
            .max_memories_per_module(2)
            .max_tables_per_module(2)
            .table_elements(100_000)
            .max_core_instance_size(8 << 20)
            .max_component_instance_size(8 << 20)
            .max_memory_size(MAX_PLUGIN_MEMORY_BYTES);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = wasmtime::Engine::new(&config).map_err(EngineError::Config)?;

        let mut detector_linker = Linker::new(&engine);
        let mut responder_linker = Linker::new(&engine);
        // WASI is linked so guests built with any toolchain instantiate, but the context grants
        // nothing: no preopens, no env, no args, no sockets (see HostState::new).
        wasmtime_wasi::p2::add_to_linker_sync(&mut detector_linker).map_err(EngineError::Link)?;
        wasmtime_wasi::p2::add_to_linker_sync(&mut responder_linker).map_err(EngineError::Link)?;
        detector::Detector::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut detector_linker,
            |s| s,
        )
        .map_err(EngineError::Link)?;
        responder::Responder::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut responder_linker,
            |s| s,
        )
        .map_err(EngineError::Link)?;

        let cache_dir = match cache_dir {
            Some(dir) => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|source| EngineError::CacheDir {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                // Deserialising a cached artifact trusts it as native code: root-only.
                let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
                Some(dir.to_path_buf())
            }
            None => None,
        };
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat_tag = format!("{:016x}", hasher.finish());

        let gate = Arc::new(TickerGate::default());
        let ticker = {
            let stop = Arc::new(AtomicBool::new(false));
            let engine = engine.clone();
            let stop_flag = Arc::clone(&stop);
            let ticker_gate = Arc::clone(&gate);
            let handle = std::thread::Builder::new()
                .name("palisade-epoch".into())
                .spawn(move || {
                    let gate = ticker_gate;
                    let mut idle_ticks = 0;
                    while !stop_flag.load(Ordering::SeqCst) {
                        std::thread::sleep(if gate.idle() {
                            EPOCH_IDLE_TICK
                        } else {
                            EPOCH_TICK
                        });
                        engine.increment_epoch();
                        idle_ticks = if gate.idle() { idle_ticks + 1 } else { 0 };
                        if idle_ticks >= IDLE_TICKS_BEFORE_PARK {
                            gate.parked.store(true, Ordering::SeqCst);
                            if gate.idle() && !stop_flag.load(Ordering::SeqCst) {
                                std::thread::park();
                            }
                            gate.parked.store(false, Ordering::SeqCst);
                            idle_ticks = 0;
                        }
                    }
                })
                .ok();
            if let Some(handle) = &handle {
                let _ = gate.thread.set(handle.thread().clone());
            }
            Some(Ticker { stop, handle })
        };

        Ok(Self {
            engine,
            detector_linker,
            responder_linker,
            cache_dir,
            compat_tag,
            ticker,
            gate,
        })
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    pub fn detector_linker(&self) -> &Linker<HostState> {
        &self.detector_linker
    }

    pub fn responder_linker(&self) -> &Linker<HostState> {
        &self.responder_linker
    }

    /// Converts a deadline in milliseconds into epoch ticks (at least one).
    pub fn ticks(deadline: Duration) -> u64 {
        (deadline.as_millis() as u64 / EPOCH_TICK.as_millis() as u64).max(1)
    }

    /// Compiles `bytes` (named `file` in errors), or loads the cached native code for the same
    /// content and engine. Returns the component and whether the cache was hit.
    pub fn compile(&self, file: &str, bytes: &[u8]) -> Result<(Component, bool), EngineError> {
        let compile_err = |reason| EngineError::Compile {
            file: file.to_string(),
            reason,
        };
        if !bytes.starts_with(b"\0asm") {
            return Err(compile_err(wasmtime::Error::msg(
                "missing the \\0asm magic number",
            )));
        }
        let Some(dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes)
                .map(|c| (c, false))
                .map_err(compile_err);
        };
        let digest = hex::encode(Sha256::digest(bytes));
        let cached = dir.join(format!("{digest}-{}.cwasm", self.compat_tag));
        if cached.is_file() {
            // SAFETY: the cache directory is created root-only (0700) by this process and
            // files are written there atomically by `store_cached` from `Engine::serialize`
            // output of the same engine configuration (compat tag in the name).
            #[expect(unsafe_code, reason = "loading our own precompiled artifact")]
            let loaded = unsafe { Component::deserialize_file(&self.engine, &cached) };
            match loaded {
                Ok(component) => return Ok((component, true)),
                Err(err) => {
                    tracing::warn!(file, cache = %cached.display(), error = %err, "discarding unusable cached component");
                    let _ = fs::remove_file(&cached);
                }
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(compile_err)?;
        match component.serialize() {
            Ok(native) => {
                if let Err(err) = store_cached(&cached, &native) {
                    tracing::warn!(file, cache = %cached.display(), error = %err, "cannot write the component cache");
                }
            }
            Err(err) => tracing::warn!(file, error = %err, "cannot serialise compiled component"),
        }
        Ok((component, false))
    }

    /// The gate every guest call must hold (see [`TickerGate`]).
    pub fn ticker_gate(&self) -> Arc<TickerGate> {
        Arc::clone(&self.gate)
    }

    /// True when the epoch ticker thread is running (deadlines can fire).
    pub fn deadlines_enforced(&self) -> bool {
        self.ticker.as_ref().is_some_and(|t| t.handle.is_some())
    }
}

fn store_cached(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn ticker_parks_when_idle_and_runs_while_a_call_does() {
        let engine = PluginEngine::new(None).unwrap();
        assert!(engine.deadlines_enforced());
        let gate = engine.ticker_gate();
        wait_until("the idle ticker parks", || {
            gate.parked.load(Ordering::SeqCst)
        });
        let running = gate.enter();
        wait_until("a call wakes the ticker", || {
            !gate.parked.load(Ordering::SeqCst)
        });
        // Well past the idle threshold, it is still ticking for the running call (the sandbox
        // tests check that deadlines fire on time).
        std::thread::sleep(EPOCH_IDLE_TICK * IDLE_TICKS_BEFORE_PARK + EPOCH_IDLE_TICK * 20);
        assert!(!gate.parked.load(Ordering::SeqCst));
        drop(running);
        wait_until("it parks again", || gate.parked.load(Ordering::SeqCst));
    }
}
