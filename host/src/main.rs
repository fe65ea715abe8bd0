//! The `palisade` binary: parse the CLI, run. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = palisade::cli::Cli::parse();
    match palisade::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // Logging may not be initialised yet (bad config): report on stderr directly.
            let mut stderr = std::io::stderr().lock();
            let _ =
                std::io::Write::write_fmt(&mut stderr, format_args!("palisade: error: {err:#}\n"));
            ExitCode::FAILURE
        }
    }
}
