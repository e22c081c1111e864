//! tcptrace: TCP state transitions, per-flow lifecycles and retransmits, traced with eBPF.
use std::process::ExitCode;

use clap::Parser as _;

mod aggregate;
mod alert;
mod btf;
mod cause;
mod cli;
mod clock;
mod decode;
mod drain;
mod evict;
mod filter;
mod floor;
mod forecast;
mod idle;
mod keepalive;
mod loader;
mod metrics;
mod model;
mod pipeline;
mod procnet;
mod recording;
mod render;
mod replay;
mod sockdiag;
mod stackstr;
mod timewait;
mod top;

/// Parses the command line; usage errors become one line and exit 2, as every other error.
fn parse() -> Result<cli::Cli, ExitCode> {
    match cli::Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("tcptrace: error: {first} (see tcptrace --help)");
            Err(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let result = match cli.command {
        Some(cli::Command::ReplayBench { records }) => replay::run(records),
        Some(cli::Command::HookFloor) => floor::run(&cli.common.btf),
        Some(cli::Command::Idle { min_idle }) => {
            let json = cli.common.json;
            filter::FilterSpec::try_from(cli.common.filter)
                .and_then(|filter| pipeline::idle_once(json, min_idle, &filter))
        }
        Some(cli::Command::Completions { shell }) => {
            cli::completions(shell, &mut std::io::stdout());
            Ok(())
        }
        Some(cli::Command::Man) => cli::man_page(&mut std::io::stdout()).map_err(Into::into),
        Some(cli::Command::Report {
            ref file,
            mode,
            interval,
        }) => cli::report_config(&cli, mode, interval)
            .and_then(|config| recording::report(file, &config)),
        _ => cli::Config::try_from(cli).and_then(pipeline::run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcptrace: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
