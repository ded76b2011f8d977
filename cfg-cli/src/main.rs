//! `cfg`: check, inspect, replay and run classifier-free guidance policies.
#![warn(clippy::all)]

mod bench;
mod check;
mod combine;
mod error;
mod finite;
mod graph;
mod grid;
mod limits;
mod list;
mod models;
mod outpath;
mod plan;
mod plot;
mod policy_arg;
mod programs;
mod quality;
mod report;
mod sample;
mod selftest;
mod selftest_sample;
mod table;
mod tensors;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// Sampling allocates prediction-sized buffers every step; glibc's allocator returns
// their pages to the OS and faults them in again (5x the per-step overhead).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Classifier-free guidance policies: check, inspect, replay and sample.
#[derive(Parser)]
#[command(name = "cfg", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate policy files or built-in names.
    Check(check::Args),
    /// Print a policy's branch graph.
    Graph(graph::Args),
    /// List the built-in policy library.
    List(list::Args),
    /// Show the per-step plan over M ranks.
    Plan(plan::Args),
    /// Replay dumped branch predictions through a policy.
    Combine(combine::Args),
    /// Sample from a model with a policy.
    Sample(sample::Args),
    /// Check every kernel of a backend against the CPU.
    Selftest(selftest::Args),
    /// Measure kernel speed against copy bandwidth.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    restore_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(a) => check::run(a),
        Command::Graph(a) => graph::run(a),
        Command::List(a) => list::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Combine(a) => combine::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Selftest(a) => selftest::run(a),
        Command::Bench(a) => bench::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.0);
            ExitCode::from(1)
        }
    }
}

/// `cfg plan | head` should end quietly like any Unix tool, not panic on a
/// closed pipe: Rust ignores SIGPIPE by default, so restore the default action.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in `main`, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
