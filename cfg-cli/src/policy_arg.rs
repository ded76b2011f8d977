//! The policy argument, the same in every subcommand: positional or `--policy`.
//!
//! A policy is a path when it contains a `/` or ends in `.ron`, and a
//! built-in name otherwise (`cfg_policies::is_path`).

use crate::error::CliError;

/// `[POLICY]` or `--policy POLICY` (not both).
#[derive(clap::Args, Debug, Clone)]
pub struct PolicyArg {
    /// A policy: a file (a path with a `/` or ending in `.ron`) or a built-in name (`cfg list`).
    #[arg(value_name = "POLICY")]
    pub positional: Option<String>,
    /// The same, as an option.
    #[arg(long = "policy", value_name = "POLICY", conflicts_with = "positional")]
    pub flag: Option<String>,
}

impl PolicyArg {
    /// The policy given, if any.
    pub fn get(&self) -> Option<&str> {
        self.flag.as_deref().or(self.positional.as_deref())
    }

    /// The policy given, or `default`.
    pub fn or(&self, default: &'static str) -> &str {
        self.get().unwrap_or(default)
    }

    /// The policy given, or an error when the command needs one.
    pub fn required(&self) -> Result<&str, CliError> {
        self.get().ok_or_else(|| CliError("no policy: give a built-in name or a .ron file (or --policy)".into()))
    }
}
