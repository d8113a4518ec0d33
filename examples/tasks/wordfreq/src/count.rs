//! The task itself: how often each word occurs in a text.

use std::collections::BTreeMap;

/// Counts the words of `text`: runs of letters, digits and apostrophes, lower-cased. The
/// map is sorted by word, so the same text always gives the same bytes.
pub fn count(text: String) -> Result<BTreeMap<String, u64>, String> {
    let mut counts = BTreeMap::new();
    for word in text
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_counted_case_blind() {
        let counts = count("The cat and the hat. THE END!".into()).unwrap();
        let got: Vec<(&str, u64)> = counts.iter().map(|(w, &n)| (w.as_str(), n)).collect();
        assert_eq!(
            got,
            [("and", 1), ("cat", 1), ("end", 1), ("hat", 1), ("the", 3)]
        );
        assert!(count(String::new()).unwrap().is_empty());
    }
}
