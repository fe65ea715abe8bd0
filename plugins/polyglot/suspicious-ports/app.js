// suspicious-ports: a Palisade detector written in JavaScript (componentize-js).
//
// | rule id | what | priority | MITRE |
// |---|---|---|---|
// | `outbound-suspicious-port` | a connection to a port used by backdoors, C2 frameworks, IRC bots or mining pools | warning | T1571 |
// | `outbound-tor-port` | a connection to a Tor SOCKS / control / relay port | notice | T1090.003 |
//
// Ports, allowed programs and allowed destinations are config keys (the sidecar's `[config]`).
// Strings of an event batch arrive as spans into one byte buffer (`batch.strings`);
// `spanReader` decodes them.

const VERSION = "0.1.0";

const DEFAULTS = {
  // Metasploit, common reverse-shell / backdoor ports, IRC, mining-pool (stratum) ports.
  ports: [4444, 4445, 1337, 31337, 6666, 6667, 6697, 3333, 5555, 7777, 14433, 14444, 45560, 45700],
  // Tor: SOCKS, browser SOCKS, control ports, default ORPort.
  "tor-ports": [9050, 9150, 9051, 9151, 9001],
  // Programs (comm) that may connect anywhere (e.g. a port scanner the team runs).
  "allowed-comms": [],
  // Destination addresses (exact text) never reported.
  "allowed-destinations": [],
  // Ignore connections to loopback addresses (127.0.0.0/8, ::1).
  "ignore-loopback": false,
};

// Returns a function that decodes a span of this batch's string buffer.
function spanReader(strings) {
  const decoder = new TextDecoder();
  return (span) => decoder.decode(strings.subarray(span.offset, span.offset + span.len));
}

let cfg = copyDefaults();

function copyDefaults() {
  return {
    ports: new Set(DEFAULTS.ports),
    torPorts: new Set(DEFAULTS["tor-ports"]),
    allowedComms: new Set(DEFAULTS["allowed-comms"]),
    allowedDestinations: new Set(DEFAULTS["allowed-destinations"]),
    ignoreLoopback: DEFAULTS["ignore-loopback"],
  };
}

function isLoopback(addr) {
  return addr.startsWith("127.") || addr === "::1" || addr.startsWith("::ffff:127.");
}

export function describe() {
  return {
    name: "suspicious-ports",
    version: VERSION,
    kind: "detector",
    description: "Outbound connections to backdoor, IRC, mining-pool and Tor ports (JavaScript)",
    // Every connect: the port list is configurable, so the subscription cannot narrow by port.
    subscriptions: [{ kinds: ["net-connect"], paths: [], pathPrefixes: [], comms: [], exes: [], ports: [], uidMin: undefined, uidMax: undefined }],
    alertFilter: undefined,
    capabilities: [],
    defaultConfig: [
      ["ports", { tag: "integer-list", val: DEFAULTS.ports.map(BigInt) }],
      ["tor-ports", { tag: "integer-list", val: DEFAULTS["tor-ports"].map(BigInt) }],
      ["allowed-comms", { tag: "text-list", val: DEFAULTS["allowed-comms"] }],
      ["allowed-destinations", { tag: "text-list", val: DEFAULTS["allowed-destinations"] }],
      ["ignore-loopback", { tag: "boolean", val: DEFAULTS["ignore-loopback"] }],
    ],
  };
}

function expect(key, value, tag) {
  if (value.tag !== tag) throw `config key \`${key}\`: expected ${tag}, got ${value.tag}`;
  return value.val;
}

function portSet(key, value) {
  const ports = Array.from(expect(key, value, "integer-list"), Number);
  for (const p of ports) {
    if (!(p >= 1 && p <= 65535)) throw `config key \`${key}\`: ${p} is not a port`;
  }
  return new Set(ports);
}

export function init(config) {
  const next = copyDefaults();
  for (const [key, value] of config) {
    switch (key) {
      case "ports": next.ports = portSet(key, value); break;
      case "tor-ports": next.torPorts = portSet(key, value); break;
      case "allowed-comms": next.allowedComms = new Set(expect(key, value, "text-list")); break;
      case "allowed-destinations": next.allowedDestinations = new Set(expect(key, value, "text-list")); break;
      case "ignore-loopback": next.ignoreLoopback = expect(key, value, "boolean"); break;
      default: throw `unknown config key \`${key}\` (known: ${Object.keys(DEFAULTS).join(", ")})`;
    }
  }
  cfg = next;
}

export function onEvents(batch) {
  const str = spanReader(batch.strings);
  const alerts = [];
  batch.events.forEach((ev, index) => {
    if (ev.data.tag !== "net-connect") return;
    const c = ev.data.val;
    const tor = cfg.torPorts.has(c.dport);
    if (!tor && !cfg.ports.has(c.dport)) return;
    const proc = batch.processes[ev.process];
    const comm = str(proc.comm);
    const daddr = str(c.daddr);
    if (cfg.allowedComms.has(comm) || cfg.allowedDestinations.has(daddr)) return;
    if (cfg.ignoreLoopback && isLoopback(daddr)) return;
    const exe = str(proc.exe) || comm;
    const cmdline = proc.args.map(str).join(" ");
    const container = proc.containerId === undefined || proc.containerId === null ? "host" : str(proc.containerId);
    const dest = daddr.includes(":") ? `[${daddr}]:${c.dport}` : `${daddr}:${c.dport}`;
    const what = tor ? "Connection to a Tor port" : "Connection to a suspicious port";
    alerts.push({
      rule: tor ? "outbound-tor-port" : "outbound-suspicious-port",
      priority: tor ? "notice" : "warning",
      message: `${what} ${dest} by ${exe} (pid ${proc.pid}, uid ${proc.uid}, cmdline "${cmdline}", container ${container})`,
      tags: tor ? ["T1090.003", "mitre_command_and_control"] : ["T1571", "mitre_command_and_control"],
      fields: [
        ["proc.exe", exe],
        ["proc.cmdline", cmdline],
        ["proc.pid", String(proc.pid)],
        ["user.uid", String(proc.uid)],
        ["container.id", container],
        ["fd.rip", daddr],
        ["fd.rport", String(c.dport)],
      ],
      eventIndex: index,
    });
  });
  return alerts;
}
