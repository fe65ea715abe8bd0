//! `falco-network`: the network rules of Falco's stable set that are not container-only.
//!
//! | rule id | Falco rule | priority |
//! |---|---|---|
//! | `disallowed-ssh-connection-non-standard-port` | Disallowed SSH Connection Non Standard Port | notice |
//!
//! An ssh client connecting out to a web, DNS or Metasploit port is the shape of a reverse
//! tunnel from a command injection. Falco only counts public destinations ("outbound");
//! here that is the `ignore-local-destinations` switch, off by default so that a tunnel to an
//! internal jump host is seen too. (`Contact K8S API Server From Container` lives in
//! `falco-container`.)

use pack_common::{describe_process, is_local_or_private, with_context};
use palisade_sdk::{
    Alert, Alerts, Config, Detector, EventKind, EventRef, NameSet, PluginInfo, Priority,
    Subscription,
};

/// Falco's `ssh_non_standard_ports`.
const PORTS: &[i64] = &[80, 8080, 88, 443, 8443, 53, 4444];
/// Programs that are ssh clients (Falco: `proc.exe endswith ssh`).
const SSH_CLIENTS: &[&str] = &["ssh", "autossh", "dbclient"];

const KNOWN_KEYS: &[&str] = &[
    "ports",
    "ssh-clients",
    "allowed",
    "ignore-local-destinations",
];

/// The detector; see the crate docs.
pub struct FalcoNetwork {
    ports: Vec<u16>,
    clients: NameSet,
    allowed: NameSet,
    ignore_local: bool,
}

impl Detector for FalcoNetwork {
    fn describe() -> PluginInfo {
        let ports: Vec<u16> = PORTS.iter().map(|p| *p as u16).collect();
        PluginInfo::detector(
            "falco-network",
            env!("CARGO_PKG_VERSION"),
            "Falco-parity network rules: ssh client connections to non-standard ports",
        )
        .subscribe(
            Subscription::to([EventKind::NetConnect])
                .ports(ports)
                .comms(SSH_CLIENTS),
        )
        .config("ports", PORTS.to_vec())
        .config("ssh-clients", SSH_CLIENTS)
        .config("allowed", Vec::<String>::new())
        .config("ignore-local-destinations", false)
    }

    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(KNOWN_KEYS)?;
        let ports = config
            .integer_list_or("ports", PORTS)?
            .into_iter()
            .map(|v| u16::try_from(v).map_err(|_| format!("config `ports`: {v} is not a port")))
            .collect::<Result<Vec<u16>, String>>()?;
        Ok(FalcoNetwork {
            ports,
            clients: NameSet::new(config.text_list_or("ssh-clients", SSH_CLIENTS)?),
            allowed: NameSet::new(config.text_list_or("allowed", &[])?),
            ignore_local: config.boolean_or("ignore-local-destinations", false)?,
        })
    }

    fn on_event(&mut self, event: EventRef<'_>, alerts: &mut Alerts) {
        let palisade_sdk::EventData::NetConnect(c) = event.data else {
            return;
        };
        let p = event.process;
        if c.protocol == 17 || !self.ports.contains(&c.dport) || !self.clients.matches_process(p) {
            return;
        }
        if self.allowed.matches_process(p) || (self.ignore_local && is_local_or_private(&c.daddr)) {
            return;
        }
        alerts.push(
            with_context(
                Alert::new(
                    "disallowed-ssh-connection-non-standard-port",
                    Priority::Notice,
                    format!(
                        "Disallowed SSH connection to {}:{} by {}",
                        c.daddr,
                        c.dport,
                        describe_process(p)
                    ),
                ),
                p,
            )
            .tags(["T1059", "mitre_execution", "network", "process"])
            .field(
                "connection",
                format!("{}:{} -> {}:{}", c.saddr, c.sport, c.daddr, c.dport),
            )
            .field("fd.rport", c.dport),
        );
    }
}

palisade_sdk::export_detector!(FalcoNetwork);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_sdk::{run_batch, ConnectionData, EventBatch, EventData, Process};

    fn connect(daddr: &str, dport: u16) -> EventData {
        EventData::NetConnect(ConnectionData {
            family: 2,
            protocol: 6,
            saddr: "10.0.2.15".into(),
            sport: 50000,
            daddr: daddr.into(),
            dport,
        })
    }

    #[test]
    fn ssh_to_odd_ports_alerts() {
        let mut d =
            FalcoNetwork::init(Config::new(FalcoNetwork::describe().default_config)).unwrap();
        let ssh = Process::new(1, "ssh", "/usr/bin/ssh");
        let curl = Process::new(2, "curl", "/usr/bin/curl");
        let mut b = EventBatch::new();
        b.push(&ssh, 1, connect("203.0.113.9", 443));
        b.push(&ssh, 2, connect("203.0.113.9", 22));
        b.push(&curl, 3, connect("203.0.113.9", 443));
        b.push(&ssh, 4, connect("127.0.0.1", 4444));
        let got: Vec<u32> = run_batch(&mut d, &b)
            .iter()
            .map(|a| a.event_index)
            .collect();
        assert_eq!(got, [0, 3]);
        let mut d =
            FalcoNetwork::init(Config::default().with("ignore-local-destinations", true)).unwrap();
        let got: Vec<u32> = run_batch(&mut d, &b)
            .iter()
            .map(|a| a.event_index)
            .collect();
        assert_eq!(got, [0]);
    }
}
