//! Alert outputs: where finished alerts are written (stdout or a file) and in which format
//! (Palisade's own JSON Lines, or Falco-compatible JSON for falcosidekick). Owns the line
//! framing, buffering and flushing; it does not decide which alerts to write (the alert bus does).
//! Serialisation goes through serde views in `jsonl` and `falco`, never hand-built JSON.

use std::fmt;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::logfile::LogFile;

pub mod falco;
pub mod jsonl;

/// A destination for alerts. Writes are buffered; `flush` pushes them out (the daemon calls it
/// after every batch of alerts, so a reader of the file sees each batch promptly).
pub trait AlertOutput: Send {
    /// Appends one alert as one line.
    fn write(&mut self, alert: &Alert) -> Result<(), OutputError>;
    /// Pushes buffered alerts to the target.
    fn flush(&mut self) -> Result<(), OutputError>;
}

/// Alert line format.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Palisade's JSON Lines: the alert, its plugin and the full triggering event.
    #[default]
    Json,
    /// Falco-compatible JSON (`time`, `rule`, `priority`, `output`, `output_fields`, `source`,
    /// `tags`, `hostname`), accepted by falcosidekick.
    Falco,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Falco => "falco",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = OutputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Format::Json),
            "falco" => Ok(Format::Falco),
            other => Err(OutputError::UnknownFormat {
                name: other.to_owned(),
            }),
        }
    }
}

/// Where alerts go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    Stdout,
    /// Opened in append mode (created when missing), so restarts never truncate old alerts;
    /// reopened by path after a log rotation ([`LogFile`]).
    File(PathBuf),
}

impl OutputTarget {
    /// `-` is stdout, anything else a file path (the CLI's `--output FILE|-`).
    pub fn from_arg(arg: &str) -> Self {
        if arg == "-" {
            OutputTarget::Stdout
        } else {
            OutputTarget::File(PathBuf::from(arg))
        }
    }

    /// Name for logs and errors.
    pub fn display_name(&self) -> String {
        match self {
            OutputTarget::Stdout => "<stdout>".to_owned(),
            OutputTarget::File(path) => path.display().to_string(),
        }
    }
}

impl FromStr for OutputTarget {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(OutputTarget::from_arg(s))
    }
}

/// Why an alert could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot open alert output {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write alerts to {target}: {source}")]
    Write {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot serialise alert {alert_id} as {format}: {source}")]
    Serialize {
        alert_id: String,
        format: Format,
        #[source]
        source: serde_json::Error,
    },
    #[error("unknown output format {name:?} (expected \"json\" or \"falco\")")]
    UnknownFormat { name: String },
}

/// How often a file output looks for a log rotation (a `stat` of its path): an alert burst
/// pays for one, and lines written before the check go to the rotated file, not nowhere.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// Opens `target` for alerts in `format`.
pub fn open_output(
    target: OutputTarget,
    format: Format,
) -> Result<Box<dyn AlertOutput>, OutputError> {
    let name = target.display_name();
    let writer: Box<dyn Write + Send> = match target {
        OutputTarget::Stdout => Box::new(io::stdout()),
        OutputTarget::File(path) => {
            let file =
                LogFile::open(&path, ROTATION_CHECK).map_err(|source| OutputError::Open {
                    path: path.clone(),
                    source,
                })?;
            Box::new(file)
        }
    };
    Ok(writer_output(writer, name, format))
}

/// An output over any writer (tests, or a future socket/pipe target). `name` appears in errors.
pub fn writer_output<W: Write + Send + 'static>(
    writer: W,
    name: impl Into<String>,
    format: Format,
) -> Box<dyn AlertOutput> {
    Box::new(LineOutput {
        out: BufWriter::with_capacity(64 * 1024, writer),
        scratch: Vec::with_capacity(1024),
        format,
        target: name.into(),
    })
}

/// Serialises one alert in `format` as a single line without the trailing newline.
pub fn render(alert: &Alert, format: Format) -> Result<String, OutputError> {
    let mut buf = Vec::with_capacity(1024);
    render_into(&mut buf, alert, format)?;
    // serde_json only writes UTF-8.
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn render_into(buf: &mut Vec<u8>, alert: &Alert, format: Format) -> Result<(), OutputError> {
    let result = match format {
        Format::Json => jsonl::write_alert(buf, alert),
        Format::Falco => falco::write_alert(buf, alert),
    };
    result.map_err(|source| OutputError::Serialize {
        alert_id: alert.id.clone(),
        format,
        source,
    })
}

/// Buffered line writer shared by both formats.
struct LineOutput<W: Write + Send> {
    out: BufWriter<W>,
    /// Each alert is serialised here first so a failure never leaves half a line in the output.
    scratch: Vec<u8>,
    format: Format,
    target: String,
}

impl<W: Write + Send> AlertOutput for LineOutput<W> {
    fn write(&mut self, alert: &Alert) -> Result<(), OutputError> {
        self.scratch.clear();
        render_into(&mut self.scratch, alert, self.format)?;
        self.scratch.push(b'\n');
        self.out
            .write_all(&self.scratch)
            .map_err(|source| OutputError::Write {
                target: self.target.clone(),
                source,
            })
    }

    fn flush(&mut self) -> Result<(), OutputError> {
        self.out.flush().map_err(|source| OutputError::Write {
            target: self.target.clone(),
            source,
        })
    }
}

/// Removes duplicate keys from a plugin's field list: the last value wins, at the position of the
/// first occurrence. JSON objects with repeated names are legal but parsers disagree about them.
pub(crate) fn dedup_fields(fields: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = Vec::with_capacity(fields.len());
    for (key, value) in fields {
        match out.iter_mut().find(|(k, _)| *k == key.as_str()) {
            Some(slot) => slot.1 = value.as_str(),
            None => out.push((key.as_str(), value.as_str())),
        }
    }
    out
}

/// A timestamp (ns since the Unix epoch) rendered as RFC 3339 UTC with nanoseconds,
/// `2026-11-28T17:00:00.123456789Z`. Serialises as that string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339Ns(pub u64);

impl fmt::Display for Rfc3339Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day, secs_of_day, nanos) = split_timestamp(self.0);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
            secs_of_day / 3600,
            secs_of_day / 60 % 60,
            secs_of_day % 60
        )
    }
}

impl Serialize for Rfc3339Ns {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Time of day, UTC, `17:00:00.123456789`: the prefix Falco puts on its `output` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeOfDayNs(pub u64);

impl fmt::Display for TimeOfDayNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (_, _, _, secs_of_day, nanos) = split_timestamp(self.0);
        write!(
            f,
            "{:02}:{:02}:{:02}.{nanos:09}",
            secs_of_day / 3600,
            secs_of_day / 60 % 60,
            secs_of_day % 60
        )
    }
}

/// (year, month, day, seconds of the day, nanoseconds) of a Unix timestamp in ns, UTC.
fn split_timestamp(ts_ns: u64) -> (u64, u32, u32, u64, u64) {
    let secs = ts_ns / 1_000_000_000;
    let nanos = ts_ns % 1_000_000_000;
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days);
    (year, month, day, secs % 86_400, nanos)
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// restricted to non-negative days since the timestamp is unsigned).
fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(Rfc3339Ns(0).to_string(), "1970-01-01T00:00:00.000000000Z");
        // 2026-11-28T17:00:00Z = 1795885200 s.
        assert_eq!(
            Rfc3339Ns(1_795_885_200_123_456_789).to_string(),
            "2026-11-28T17:00:00.123456789Z"
        );
        // Leap day and the end of a leap year.
        assert_eq!(
            Rfc3339Ns(951_782_400_000_000_001).to_string(),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            Rfc3339Ns(1_735_689_599_999_999_999).to_string(),
            "2024-12-31T23:59:59.999999999Z"
        );
        assert_eq!(
            TimeOfDayNs(1_795_885_200_123_456_789).to_string(),
            "17:00:00.123456789"
        );
    }

    #[test]
    fn civil_from_days_matches_a_day_by_day_calendar() {
        fn days_in_month(year: u64, month: u32) -> u32 {
            let leap =
                (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
            match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            }
        }
        let mut expected = (1970u64, 1u32, 1u32);
        for days in 0..(431 * 366) {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            expected.2 += 1;
            if expected.2 > days_in_month(expected.0, expected.1) {
                expected.2 = 1;
                expected.1 += 1;
                if expected.1 > 12 {
                    expected.1 = 1;
                    expected.0 += 1;
                }
            }
        }
    }

    #[test]
    fn dedup_keeps_first_position_last_value() {
        let fields = vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "3".to_owned()),
        ];
        assert_eq!(dedup_fields(&fields), vec![("a", "3"), ("b", "2")]);
    }

    #[test]
    fn format_names() {
        assert_eq!("falco".parse::<Format>().unwrap(), Format::Falco);
        assert!("xml".parse::<Format>().is_err());
        assert_eq!(OutputTarget::from_arg("-"), OutputTarget::Stdout);
    }
}
