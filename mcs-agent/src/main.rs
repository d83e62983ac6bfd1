use std::process::ExitCode;

use clap::{CommandFactory, Parser, error::ErrorKind};
use mcs_agent::{
    cli::{Cli, Command},
    dump, run, telemetry,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Controller(args) = &cli.command
        && let Err(message) = args.validate()
    {
        Cli::command()
            .error(ErrorKind::ArgumentConflict, message)
            .exit();
    }
    telemetry::init(cli.log_format, &cli.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::Dump(args) => dump::dump(&args),
            Command::Controller(args) => {
                mcs_agent::controller::run(*args).await.map_err(Into::into)
            }
            Command::Cleanup(args) => {
                // Not under a running agent: it would go on with its pins gone.
                let _lock = if args.bpffs_dir.exists() {
                    Some(mcs_agent::dataplane::lock::acquire(&args.bpffs_dir)?)
                } else {
                    None
                };
                let removed = mcs_agent::dataplane::remove_pins(&args.bpffs_dir);
                println!(
                    "removed {} pinned objects under {}",
                    removed.len(),
                    args.bpffs_dir.display()
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
