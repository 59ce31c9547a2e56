//! The `qsfs` command. Exit codes: 0 ok, 1 the operation failed, 2 usage error (clap's own).

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Started by mount(8) as /sbin/mount.fuse.qsfs: its calling convention, turned into `qsfs mount`.
    let args = match argv.first() {
        Some(a0) if cli::mount_helper::invoked_as_helper(a0) => {
            match cli::mount_helper::translate(&argv) {
                Ok(cli::mount_helper::HelperCall::Mount(v)) => cli::Cli::parse_from(v),
                Ok(cli::mount_helper::HelperCall::Remount {
                    mountpoint,
                    read_only,
                }) => {
                    return match cli::mount_helper::remount(&mountpoint, read_only) {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("qsfs: {e:#}");
                            ExitCode::from(1)
                        }
                    };
                }
                Err(e) => {
                    eprintln!("qsfs: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => cli::Cli::parse(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("QSFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Never panics on a full disk (a background mount logs to VOLUME/mount.log): see `qsfs::log_writer`.
        .with_writer(qsfs::log_writer::ResilientStderr)
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .compact()
        .init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`qsfs ls | head`): stop quietly with the status a shell shows for a
        // command killed by SIGPIPE, as coreutils do.
        Err(e) if e.downcast_ref::<cli::StdoutClosed>().is_some() => ExitCode::from(141),
        Err(e) => {
            let line = cli::error_line(&e);
            eprintln!("qsfs: {line}");
            ExitCode::from(1)
        }
    }
}
