//! Shortening text for error messages, log lines and message attributes. Pure.
//!
//! The only place that cuts strings to a byte budget (`names::echo` shortens an echoed value by
//! characters): every cut lands on a UTF-8 character boundary, so a quoted hostile input (serde
//! quotes the offending value in its errors) can never make a cut panic.

/// `s` cut to at most `max` bytes on a character boundary; a cut string ends in `...` (the
/// marker counts towards `max`).
pub fn shorten(s: &str, max: usize) -> String {
    const MARK: &str = "...";
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &s[..end])
}

/// How long a decoder's or envelope parser's error message may get.
pub const ERROR_MAX: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("", 0), "");
    }

    #[test]
    fn long_text_is_cut_with_a_marker() {
        assert_eq!(shorten("abcdefgh", 6), "abc...");
        assert_eq!(shorten("abcdefgh", 6).len(), 6);
    }

    #[test]
    fn cuts_never_split_a_character() {
        // Every cut position through multi-byte characters: never a panic, never over max.
        let s = "ééééé€€€€😀😀😀 tail";
        for max in 0..s.len() + 2 {
            let out = shorten(s, max);
            assert!(out.len() <= max.max(3), "{max}: {out}");
            assert!(s.starts_with(out.trim_end_matches("...")));
        }
    }
}
