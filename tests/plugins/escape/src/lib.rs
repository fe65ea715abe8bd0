//! Test plugin `escape`: tries to reach outside the sandbox through WASI on every file_open
//! event — read a host file, list the root directory, create a file, read the environment and
//! arguments, open a TCP connection to the port in config `port` — and reports each outcome in
//! one `escape-report` alert (field value "denied" or "REACHED: ..."), so the host test can
//! assert that the WASI context grants nothing.

use std::io::Read;

use palisade_sdk::{Alert, Alerts, Config, Detector, EventKind, EventRef, PluginInfo, Priority, Subscription};

struct Escape {
    port: i64,
}

fn outcome<T, E>(result: Result<T, E>, describe: impl FnOnce(T) -> String) -> String {
    match result {
        Ok(value) => format!("REACHED: {}", describe(value)),
        Err(_) => "denied".to_string(),
    }
}

impl Detector for Escape {
    fn describe() -> PluginInfo {
        PluginInfo::detector("escape", "0.1.0", "Test plugin: probes the WASI sandbox from inside")
            .subscribe(Subscription::to([EventKind::FileOpen]))
            .config("port", 0i64)
    }

    fn init(config: Config) -> Result<Self, String> {
        Ok(Escape {
            port: config.integer_or("port", 0)?,
        })
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        let path = event.path().unwrap_or("/etc/hostname").to_string();
        let read = outcome(std::fs::File::open(&path), |mut f| {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            format!("{} bytes", s.len())
        });
        let list = outcome(std::fs::read_dir("/"), |d| format!("{} entries", d.count()));
        let create = outcome(std::fs::write("/tmp/palisade-escape-probe", b"x"), |_| "file created".into());
        let env = std::env::vars().count();
        let args = std::env::args().count();
        let connect = outcome(
            std::net::TcpStream::connect(("127.0.0.1", self.port as u16)),
            |_| "connected".into(),
        );
        alerts.push(
            Alert::new("escape-report", Priority::Informational, "sandbox probe")
                .field("read", read)
                .field("list", list)
                .field("create", create)
                .field("env", if env == 0 { "denied".to_string() } else { format!("REACHED: {env} vars") })
                .field("args", if args == 0 { "denied".to_string() } else { format!("REACHED: {args} args") })
                .field("connect", connect),
        );
    }
}

palisade_sdk::export_detector!(Escape);
