//! `vrouterctl`: the operator's client for a running vrouter (same as `vrouter ctl`).

use clap::Parser;

#[derive(Parser)]
#[command(name = "vrouterctl", version, about = "Show and change a running vrouter through its control socket")]
struct Cli {
    #[command(flatten)]
    args: vrouterctl::CtlArgs,
}

fn main() -> std::process::ExitCode {
    vrouterctl::run(Cli::parse().args)
}
