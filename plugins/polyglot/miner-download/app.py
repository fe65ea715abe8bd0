"""miner-download: a Palisade detector written in Python (componentize-py).

| rule id | what | priority | MITRE |
|---|---|---|---|
| `crypto-miner-exec` | a known miner binary, or miner arguments (stratum URL, pool / algorithm flags) | critical | T1496 |
| `download-to-writable-dir` | curl / wget writing into /tmp, /var/tmp or /dev/shm | warning | T1105 |
| `download-from-ip-url` | curl / wget fetching a URL whose host is a bare IPv4 address | notice | T1105 |

Every list is a config key, so the sidecar's `[config]` can extend or empty it. Strings of an
event batch arrive as spans into one byte buffer (`batch.strings`); `Strings` decodes them.
"""

import componentize_py_types
import wit_world
from wit_world.imports import types as t

VERSION = "0.1.0"

DEFAULTS = {
    # Program names (basename of the executable or comm) of well-known miners.
    "miner-names": ["xmrig", "xmr-stak", "minerd", "cpuminer", "cpuminer-multi", "ccminer",
                    "ethminer", "nbminer", "t-rex", "lolminer", "phoenixminer", "nanominer",
                    "srbminer-multi", "teamredminer", "bminer", "gminer"],
    # Substrings of an argument (lower-cased) that only miners use.
    "miner-arg-patterns": ["stratum+tcp://", "stratum+ssl://", "stratum2+tcp://",
                           "stratum+tls://", "--donate-level", "--randomx", "cryptonight",
                           "--coin=monero", "--nicehash", "pool.minexmr", "nanopool.org",
                           "supportxmr.com", "moneroocean"],
    # Programs that download files.
    "download-tools": ["curl", "wget", "fetch", "aria2c"],
    # Directories a downloaded file must not be written into.
    "writable-dirs": ["/tmp/", "/var/tmp/", "/dev/shm/"],
    # URL prefixes never reported (internal mirrors, package caches).
    "allowed-urls": [],
    # Executables (full path) never reported by any rule.
    "allowed-exes": [],
}


class Strings:
    """Decodes the spans of one batch: `strings(span)` is the text `span` points at."""

    def __init__(self, buf: bytes):
        self.buf = buf

    def __call__(self, span: t.Span) -> str:
        return self.buf[span.offset:span.offset + span.len].decode("utf-8", "replace")


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def host_of(url: str) -> str:
    """The host part of an http(s)/ftp URL, or "" when `url` is not one."""
    lower = url.lower()
    for scheme in ("http://", "https://", "ftp://"):
        if lower.startswith(scheme):
            rest = url[len(scheme):]
            host = rest.split("/", 1)[0].split("@")[-1]
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return ""


def is_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) <= 255 for p in parts)


def output_targets(tool: str, args: list) -> list:
    """Files or directories the download tool writes to, from its arguments."""
    out = []
    i = 1
    while i < len(args):
        a = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if a in ("-o", "--output", "-O", "--output-document", "-P", "--directory-prefix") and nxt:
            if not (tool == "curl" and a == "-O"):  # curl -O takes no value
                out.append(nxt)
                i += 2
                continue
        for long in ("--output=", "--output-document=", "--directory-prefix="):
            if a.startswith(long):
                out.append(a[len(long):])
        if a.startswith("-o") and len(a) > 2 and tool == "curl":
            out.append(a[2:])
        i += 1
    return out


class WitWorld(wit_world.WitWorld):
    def __init__(self):
        self.cfg = {k: list(v) for k, v in DEFAULTS.items()}

    def describe(self) -> t.PluginInfo:
        return t.PluginInfo(
            name="miner-download",
            version=VERSION,
            kind=t.PluginKind.DETECTOR,
            description="Crypto-miner executions and downloads into world-writable directories (Python)",
            # Every exec: miners are recognised by arguments as well as by name.
            subscriptions=[t.Subscription(kinds=[t.EventKind.EXEC], paths=[], path_prefixes=[],
                                          comms=[], exes=[], ports=[], uid_min=None, uid_max=None)],
            alert_filter=None,
            capabilities=[],
            default_config=[(k, t.ConfigValue_TextList(v)) for k, v in DEFAULTS.items()],
        )

    def init(self, config) -> None:
        cfg = {k: list(v) for k, v in DEFAULTS.items()}
        for key, value in config:
            if key not in DEFAULTS:
                raise componentize_py_types.Err(
                    f"unknown config key `{key}` (known: {', '.join(DEFAULTS)})")
            if not isinstance(value, t.ConfigValue_TextList):
                raise componentize_py_types.Err(f"config key `{key}`: expected a list of strings")
            cfg[key] = list(value.value)
        cfg["miner-names"] = [n.lower() for n in cfg["miner-names"]]
        cfg["miner-arg-patterns"] = [p.lower() for p in cfg["miner-arg-patterns"]]
        self.cfg = cfg

    def on_events(self, batch: t.EventBatch):
        s = Strings(batch.strings)
        alerts = []
        for index, ev in enumerate(batch.events):
            if not isinstance(ev.data, t.EventData_Exec):
                continue
            proc = batch.processes[ev.process]
            alert = self.check_exec(s, proc, ev.data.value, index)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def check_exec(self, s: Strings, proc: t.Process, data: t.ExecData, index: int):
        cfg = self.cfg
        filename = s(data.filename)
        if filename in cfg["allowed-exes"]:
            return None
        args = [s(a) for a in data.args]
        name = basename(filename).lower()
        comm = s(proc.comm).lower()
        lowered = [a.lower() for a in args[1:]]

        hit = None
        if name in cfg["miner-names"] or comm in cfg["miner-names"]:
            hit = f"miner program {name}"
        else:
            for pattern in cfg["miner-arg-patterns"]:
                if any(pattern in a for a in lowered):
                    hit = f"miner argument {pattern!r}"
                    break
        if hit is not None:
            return self.alert(s, proc, filename, args, index, "crypto-miner-exec",
                              t.Priority.CRITICAL, f"Crypto-miner started ({hit})",
                              ["T1496", "mitre_impact"], [("miner.match", hit)])

        if name not in cfg["download-tools"]:
            return None
        urls = [a for a in args[1:] if host_of(a)]
        if urls and all(any(u.startswith(p) for p in cfg["allowed-urls"]) for u in urls):
            return None
        for target in output_targets(name, args):
            if any(target.startswith(d) or target + "/" == d for d in cfg["writable-dirs"]):
                return self.alert(s, proc, filename, args, index, "download-to-writable-dir",
                                  t.Priority.WARNING,
                                  f"Download into a world-writable directory ({target})",
                                  ["T1105", "mitre_command_and_control"],
                                  [("download.target", target), ("download.url", ",".join(urls))])
        for url in urls:
            if is_ipv4(host_of(url)):
                return self.alert(s, proc, filename, args, index, "download-from-ip-url",
                                  t.Priority.NOTICE, f"Download from a bare IP address ({url})",
                                  ["T1105", "mitre_command_and_control"],
                                  [("download.url", url)])
        return None

    def alert(self, s, proc, filename, args, index, rule, priority, what, tags, extra):
        container = s(proc.container_id) if proc.container_id is not None else "host"
        cmdline = " ".join(args)
        message = (f"{what}: {filename} (pid {proc.pid}, uid {proc.uid}, "
                   f"cmdline \"{cmdline}\", container {container})")
        fields = [("proc.exe", filename), ("proc.cmdline", cmdline), ("proc.pid", str(proc.pid)),
                  ("proc.ppid", str(proc.ppid)), ("user.uid", str(proc.uid)),
                  ("container.id", container)] + extra
        return t.Alert(rule=rule, priority=priority, message=message, tags=tags, fields=fields,
                       event_index=index)
