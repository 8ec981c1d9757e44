//! The `fleetkey` command.

mod cmd;
mod error;
mod input;

use clap::{Parser, Subcommand};

/// fleetkey: symmetric key management for CAN and CAN FD device fleets.
#[derive(Parser)]
#[command(
    name = "fleetkey",
    version,
    about = "fleetkey: symmetric key management for CAN and CAN FD device fleets",
    after_help = "Start with `fleetkey demo`, or `fleetkey init --help`. Docs: docs/manager.md."
)]
struct Cli {
    #[command(flatten)]
    global: cmd::ctx::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a fleet home on the embedded defaults.
    Init(cmd::init::InitArgs),
    /// Show the fleet: scheme, generations, devices by state.
    Status(cmd::init::StatusArgs),
    /// Register, provision, refresh and retire devices.
    #[command(subcommand)]
    Device(cmd::device::Command),
    /// Master generations: create, rotate, retire.
    #[command(subcommand)]
    Generation(cmd::generation::Command),
    /// Master key backup: restore and verify custodian shares.
    #[command(subcommand)]
    Master(cmd::master::Command),
    /// Where a rotation stands, and what the lifecycle policy requires next.
    #[command(subcommand)]
    Rotation(cmd::generation::RotationCommand),
    /// The lifecycle policy: cryptoperiods and lifetimes; what is due.
    #[command(subcommand)]
    Policy(cmd::policy::Command),
    /// Carry out the lifecycle policy (from cron, or `fleetkey serve` does it).
    #[command(subcommand)]
    Lifecycle(cmd::lifecycle::Command),
    /// Governance records (governed scheme): publish, show, verify, export.
    #[command(subcommand)]
    Governance(cmd::governance::Command),
    /// Technician and operator grants (governed scheme): issue, deny, list, show.
    #[command(subcommand)]
    Grant(cmd::governance::GrantCommand),
    /// The hash-chained audit record.
    #[command(subcommand)]
    Audit(cmd::audit::Command),
    /// Throughput benchmarks with a reference measured in the same run.
    #[command(subcommand)]
    Bench(cmd::bench::Command),
    Derive(cmd::derive::Args),
    Roll(cmd::roll::Args),
    /// SHE memory update messages M1-M5: build and verify.
    #[command(subcommand)]
    She(cmd::she::Command),
    /// Secure and verify frames in candump log format (SecOC profiles).
    #[command(subcommand)]
    Can(cmd::can::Command),
    /// The walkthrough on a simulated CAN FD bus: fleet, network, attacks, rotation, audit.
    #[cfg(feature = "sim")]
    Demo(cmd::demo::Args),
    /// The HTTP service: the fleet's operations over JSON for stations, operators, technicians.
    Serve(cmd::serve::ServeArgs),
    /// Bearer tokens of the HTTP service: issue, revoke, list.
    #[command(subcommand)]
    Token(cmd::token::Command),
    /// The CAN FD fleet simulator: a whole network in process, or nodes over UDP.
    #[cfg(feature = "sim")]
    #[command(subcommand)]
    Sim(cmd::sim::Command),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let global = &cli.global;
    let result = match cli.command {
        Command::Init(args) => cmd::init::init(global, args),
        Command::Status(args) => cmd::init::status(global, args),
        Command::Device(command) => cmd::device::run(global, command),
        Command::Generation(command) => cmd::generation::run(global, command),
        Command::Rotation(command) => cmd::generation::rotation(global, command),
        Command::Policy(command) => cmd::policy::run(global, command),
        Command::Lifecycle(command) => cmd::lifecycle::run(global, command),
        Command::Master(command) => cmd::master::run(global, command),
        Command::Governance(command) => cmd::governance::run(global, command),
        Command::Grant(command) => cmd::governance::grant(global, command),
        Command::Audit(command) => cmd::audit::run(global, command),
        Command::Bench(command) => cmd::bench::run(global, command),
        Command::Derive(args) => cmd::derive::run(args),
        Command::Roll(args) => cmd::roll::run(args),
        Command::She(command) => cmd::she::run(command),
        Command::Can(command) => cmd::can::run(global, command),
        #[cfg(feature = "sim")]
        Command::Demo(args) => cmd::demo::run(global, args),
        Command::Serve(args) => cmd::serve::run(global, args),
        Command::Token(command) => cmd::token::run(global, command),
        #[cfg(feature = "sim")]
        Command::Sim(command) => cmd::sim::run(global, command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => err.report(),
    }
}
