//! Argument ranges and the memory a run will need, checked before it starts,
//! so that no argument makes `cfg` panic, abort or swap.

use crate::error::CliError;
use crate::models::bytes;

/// The most steps a run may have (samplers of real systems use at most 1000).
pub const MAX_STEPS: usize = 10_000;
/// The largest batch of the analytic model.
pub const MAX_BATCH: usize = 1 << 24;
/// The most ranks `cfg plan` plans for.
pub const MAX_PLAN_RANKS: usize = 1024;
/// The most in-process ranks (threads) `cfg sample` runs.
pub const MAX_SAMPLE_RANKS: usize = 256;

/// Checks `value` of `flag` lies in `1..=max`.
pub fn in_range(flag: &str, value: usize, max: usize, what: &str) -> Result<usize, CliError> {
    if value == 0 {
        return Err(CliError(format!("{flag} 0: {what} must be at least 1")));
    }
    if value > max {
        return Err(CliError(format!("{flag} {value}: at most {max} {what}")));
    }
    Ok(value)
}

/// Bytes of memory the OS can still give (`MemAvailable` of /proc/meminfo), if known.
pub fn available_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// Refuses a run whose estimate exceeds the available memory, unless `force`.
pub fn check_memory(estimate: usize, force: bool) -> Result<(), CliError> {
    if force {
        return Ok(());
    }
    match available_memory() {
        Some(avail) if estimate > avail => Err(CliError(format!(
            "this run needs about {} of memory but only {} is available: lower --batch, --ranks or the \
             number of grid runs (or pass --no-memory-check to run anyway)",
            bytes(estimate),
            bytes(avail)
        ))),
        _ => Ok(()),
    }
}

/// `first-last` for a run of consecutive numbers, else the list: `0-3,7,9-11`.
pub fn ranges(numbers: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let mut j = i;
        while j + 1 < numbers.len() && numbers[j + 1] == numbers[j] + 1 {
            j += 1;
        }
        out.push(if j == i { numbers[i].to_string() } else { format!("{}-{}", numbers[i], numbers[j]) });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_compress_runs() {
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10, 11]), "0-3,7,9-11");
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[5]), "5");
    }

    #[test]
    fn zero_and_too_large_are_refused() {
        assert!(in_range("--steps", 0, 10, "steps").unwrap_err().0.contains("at least 1"));
        assert!(in_range("--steps", 11, 10, "steps").unwrap_err().0.contains("at most 10"));
        assert_eq!(in_range("--steps", 10, 10, "steps").unwrap(), 10);
    }
}
