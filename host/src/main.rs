//! The `palisade` binary: parse the CLI, initialise telemetry, run. Everything else is in the library.

fn main() -> anyhow::Result<()> {
    Ok(())
}
