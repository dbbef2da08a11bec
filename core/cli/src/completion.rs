//! `tasker completion SHELL`: the shell completion script, generated from the same
//! command definitions the parser uses (clap_complete), so it never drifts.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::session::Outcome;
use crate::Cli;

pub fn print(shell: Shell) -> Outcome {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "tasker", &mut out);
    Ok(())
}
