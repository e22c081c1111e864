//! tcptrace: TCP state transitions, per-flow lifecycles and retransmits, traced with eBPF.
use std::process::ExitCode;

use clap::Parser as _;

mod cli;
mod decode;
#[cfg(test)]
mod fuzz_tests;
mod host;
mod kernel;
#[cfg(test)]
mod layout_tests;
mod model;
mod output;
mod run;
mod state;
mod text;

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
            eprintln!(
                "tcptrace: error: {} (see tcptrace --help)",
                usage_error_line(&e.to_string())
            );
            Err(ExitCode::from(2))
        }
    }
}

/// clap's message up to its usage block on one line, its tips kept ("unrecognized subcommand
/// 'flow'; tip: a similar subcommand exists: 'flows'").
fn usage_error_line(rendered: &str) -> String {
    let lines: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.is_empty())
        .collect();
    let message = lines.join("; ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    if message.is_empty() {
        "invalid arguments".to_string()
    } else {
        message.to_string()
    }
}

/// The mode's consumer, driven by the session (or, for `idle`, one report).
fn run(config: &cli::Config) -> anyhow::Result<()> {
    use run::session;
    let metrics = output::exporter::MetricsExporter::for_config(config);
    match &config.mode {
        cli::Mode::Idle { min_idle } => output::lines::idle_once(config, *min_idle),
        cli::Mode::Top => {
            session::run(config, &mut (output::top::TopScreen::new(config)?, metrics))
        }
        cli::Mode::Record(options) => session::run(
            config,
            &mut (
                run::recording::Recorder::new(config, options.clone()),
                metrics,
            ),
        ),
        _ => {
            let lines = output::lines::LinePrinter::stdout(config, host::clock::Clock::now());
            session::run(config, &mut (lines, metrics))
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
        Some(cli::Command::ReplayBench { records }) => run::replay::run(records),
        #[cfg(feature = "bench")]
        Some(cli::Command::HookFloor { variant }) => kernel::floor::run(&cli.common.btf, variant),
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
            .and_then(|config| run::recording::report(file, &config)),
        _ => cli::Config::try_from(cli).and_then(|config| run(&config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcptrace: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn usage_error(args: &[&str]) -> String {
        let e = cli::Cli::try_parse_from(args).expect_err("a usage error");
        usage_error_line(&e.to_string())
    }

    #[test]
    fn usage_errors_keep_clap_tips_on_one_line() {
        let line = usage_error(&["tcptrace", "flow"]);
        assert_eq!(
            line,
            "unrecognized subcommand 'flow'; tip: a similar subcommand exists: 'flows'"
        );
        let line = usage_error(&["tcptrace", "flows", "--durration", "3s"]);
        assert!(
            line.starts_with("unexpected argument '--durration' found; tip: a similar argument exists: '--duration'"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
