//! "Did you mean": the known name nearest to a mistyped one (event names, task and step
//! states, step names), when it is near enough to be a typo.

/// The candidate nearest to `given` by edit distance, if within a third of the longer
/// name's length (at least 2 edits) and fewer than the shorter name's length.
pub fn did_you_mean<'a>(
    given: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(given, c), c))
        // A name so short that every edit replaces most of it suggests nothing.
        .filter(|(d, c)| {
            *d <= (given.len().max(c.len()) / 3).max(2) && *d < given.len().min(c.len())
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_names_are_suggested_and_far_ones_not() {
        let events = ["step.failed", "step.completed", "task.failed"];
        assert_eq!(did_you_mean("step.faild", events), Some("step.failed"));
        assert_eq!(did_you_mean("nonsense.entirely", events), None);
        assert_eq!(
            did_you_mean("failed", ["pending", "running", "error"]),
            None
        );
        assert_eq!(did_you_mean("b", ["a"]), None);
    }
}
