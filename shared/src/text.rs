//! Shortening text for error messages, log lines and message attributes. Pure.
//!
//! The only place that cuts strings (`names::echo` and `act::toolkit::api_message` are these,
//! re-exported): every cut lands on a UTF-8 character boundary, so a quoted hostile input
//! (serde quotes the offending value in its errors) can never make a cut panic.

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

/// Longest input value echoed back in an error message, in characters.
const ECHO_MAX: usize = 64;

/// An input value (a name, a CIDR, a field) as quoted in an error message or a log line: whole
/// up to 64 characters, otherwise its first 64 characters and its length.
pub fn echo(value: &str) -> String {
    match value.char_indices().nth(ECHO_MAX) {
        None => value.to_string(),
        Some((cut, _)) => format!("{}…({} bytes)", &value[..cut], value.len()),
    }
}

/// An API's error message as it goes into our errors: whole up to 300 bytes, otherwise
/// [`echo`]ed.
pub fn api_message(s: &str) -> String {
    if s.len() <= 300 {
        s.to_string()
    } else {
        echo(s)
    }
}

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
    fn echo_keeps_short_values_and_cuts_long_ones_by_character() {
        assert_eq!(echo("k8s-worker-1"), "k8s-worker-1");
        let long = "é".repeat(70);
        let e = echo(&long);
        assert!(e.starts_with(&"é".repeat(64)), "{e}");
        assert!(e.ends_with("…(140 bytes)"), "{e}");
        assert_eq!(api_message("short"), "short");
        assert!(api_message(&"x".repeat(301)).ends_with("…(301 bytes)"));
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
