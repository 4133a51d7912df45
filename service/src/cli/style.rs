//! Colour on a terminal only: raw ANSI SGR codes, off when stdout is not a terminal or
//! `NO_COLOR` is set.

use std::io::IsTerminal;

/// Whether stdout gets colour.
pub(super) fn color_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The SGR code for a status: 2xx green, 3xx blue, 4xx amber, 5xx red.
pub(super) fn status_color(status: i32) -> Option<&'static str> {
    match status {
        200..=299 => Some("32"),
        300..=399 => Some("34"),
        // 256-colour orange-yellow: amber, distinct from the red of 5xx.
        400..=499 => Some("38;5;214"),
        500..=599 => Some("31"),
        _ => None,
    }
}

/// `text` in `code`'s colour when `on`.
pub(super) fn paint(text: &str, code: Option<&str>, on: bool) -> String {
    match (on, code) {
        (true, Some(code)) => format!("\x1b[{code}m{text}\x1b[0m"),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_get_their_colours_and_plain_output_has_no_codes() {
        assert_eq!(status_color(204), Some("32"));
        assert_eq!(status_color(302), Some("34"));
        assert_eq!(status_color(429), Some("38;5;214"));
        assert_eq!(status_color(503), Some("31"));
        assert_eq!(paint("503", status_color(503), true), "\x1b[31m503\x1b[0m");
        assert_eq!(paint("503", status_color(503), false), "503");
    }
}
