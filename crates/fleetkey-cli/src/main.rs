//! The `fleetkey` command.

mod cmd;
mod error;
mod input;

use clap::{Parser, Subcommand};


/// fleetkey: symmetric key management for CAN and CAN FD device fleets.
#[derive(Parser)]
#[command(name = "fleetkey", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Derive(cmd::derive::Args),
    Roll(cmd::roll::Args),
    #[command(subcommand)]
    She(cmd::she::Command),
    #[command(subcommand)]
    Can(cmd::can::Command),
    Demo(cmd::demo::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Derive(args) => cmd::derive::run(args),
        Command::Roll(args) => cmd::roll::run(args),
        Command::She(command) => cmd::she::run(command),
        Command::Can(command) => cmd::can::run(command),
        Command::Demo(args) => cmd::demo::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => err.report(),
    }
}
