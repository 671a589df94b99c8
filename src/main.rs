//! The `deltacast` binary: parses the command line, sets up logging and the runtime, runs
//! the command, and turns any error into one line on stderr and a non-zero exit code.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;

use deltacast::cli::{self, Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            // Our errors say their cause in their own one line; no chain to print.
            eprintln!("deltacast: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version print as clap renders them; a usage mistake is one line on stderr.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return ExitCode::from(2);
    }
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid command line");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("deltacast: {first} (see deltacast --help)");
    ExitCode::from(2)
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    // Commands that print for people stay quiet unless something is wrong.
    let default_level = match cli.command {
        Command::Status(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // One worker per core (tokio's default; TOKIO_WORKER_THREADS overrides it).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    let code = runtime.block_on(cli::run(cli))?;
    Ok(code)
}
