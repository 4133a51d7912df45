//! Query strings are stored with the values of sensitive parameters redacted.

use std::borrow::Cow;
use std::collections::HashSet;

/// What replaces a sensitive parameter's value.
pub const REDACTED: &str = "[REDACTED]";

/// Parameter names whose values never reach storage, unless configured otherwise.
pub const DEFAULT_SENSITIVE_PARAMS: &[&str] = &[
    "api_key",
    "apikey",
    "key",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "signature",
    "sig",
    "auth",
    "authorization",
    "session",
    "session_id",
    "code",
];

/// Redacts the values of sensitive query parameters; other pairs keep their order and text.
#[derive(Debug, Clone)]
pub struct Sanitizer {
    sensitive: HashSet<String>,
}

impl Default for Sanitizer {
    fn default() -> Self {
        Self::new(DEFAULT_SENSITIVE_PARAMS.iter().copied())
    }
}

impl Sanitizer {
    /// A sanitizer for these parameter names (compared case-insensitively).
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            sensitive: names
                .into_iter()
                .map(|name| name.trim().to_ascii_lowercase())
                .filter(|name| !name.is_empty())
                .collect(),
        }
    }

    /// The query string with every sensitive value replaced by [`REDACTED`].
    ///
    /// A name is compared after percent- and `+`-decoding and without a trailing `[]`, so
    /// `Token=…`, `to%6Ben=…` and `token[]=…` are all caught.
    pub fn sanitize(&self, query: &str) -> String {
        let mut out = String::with_capacity(query.len());
        for (index, pair) in query.split('&').enumerate() {
            if index > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _value)) if self.is_sensitive(name) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
        }
        out
    }

    fn is_sensitive(&self, raw_name: &str) -> bool {
        let decoded = decode_component(raw_name).to_ascii_lowercase();
        let name = decoded.trim().trim_end_matches("[]");
        self.sensitive.contains(name)
    }
}

/// Percent- and `+`-decodes one query component; bytes that are not valid UTF-8 are replaced.
fn decode_component(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['%', '+']) {
        return Cow::Borrowed(raw);
    }
    let spaced = raw.replace('+', " ");
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(&spaced).collect();
    Cow::Owned(String::from_utf8_lossy(&decoded).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_default_name_and_keeps_the_rest() {
        let sanitizer = Sanitizer::default();
        for name in DEFAULT_SENSITIVE_PARAMS {
            let query = format!("a=1&{name}=s3cr3t&duration=5");
            let clean = sanitizer.sanitize(&query);
            assert_eq!(clean, format!("a=1&{name}={REDACTED}&duration=5"));
            assert!(!clean.contains("s3cr3t"));
        }
    }

    #[test]
    fn names_compare_case_insensitively_and_decoded() {
        let sanitizer = Sanitizer::default();
        assert_eq!(
            sanitizer.sanitize("TOKEN=abc&Api_Key=x&to%6Ben=y&token%5B%5D=z&sig=q"),
            format!(
                "TOKEN={REDACTED}&Api_Key={REDACTED}&to%6Ben={REDACTED}&token%5B%5D={REDACTED}&sig={REDACTED}"
            )
        );
    }

    #[test]
    fn values_holding_equals_signs_are_redacted_whole() {
        assert_eq!(
            Sanitizer::default().sanitize("token=a=b=c&duration=5"),
            format!("token={REDACTED}&duration=5")
        );
    }

    #[test]
    fn pairs_without_values_and_empty_parts_stay() {
        assert_eq!(
            Sanitizer::default().sanitize("flag&&x=1&token"),
            "flag&&x=1&token"
        );
    }

    #[test]
    fn the_list_is_configurable() {
        let sanitizer = Sanitizer::new(["tenant"]);
        assert_eq!(
            sanitizer.sanitize("tenant=acme&token=abc"),
            format!("tenant={REDACTED}&token=abc")
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// A parameter name as a client may spell it: any case, percent- or `+`-encoded
    /// letters, padded with encoded spaces, with or without `[]`.
    fn spelling(name: &'static str) -> impl Strategy<Value = String> {
        let letters: Vec<_> = name
            .chars()
            .map(|c| {
                prop_oneof![
                    Just(c.to_string()),
                    Just(c.to_ascii_uppercase().to_string()),
                    Just(format!("%{:02X}", c as u32)),
                    Just(format!("%{:02x}", c.to_ascii_uppercase() as u32)),
                ]
            })
            .collect();
        (
            letters,
            prop_oneof![Just(""), Just("[]"), Just("%5B%5D")],
            prop_oneof![Just(""), Just("+"), Just("%20")],
        )
            .prop_map(|(letters, suffix, pad)| format!("{pad}{}{suffix}", letters.concat()))
    }

    fn sensitive_name() -> impl Strategy<Value = String> {
        proptest::sample::select(DEFAULT_SENSITIVE_PARAMS).prop_flat_map(spelling)
    }

    /// A pair: (raw name, whether it is sensitive).
    fn pair() -> impl Strategy<Value = (String, bool)> {
        prop_oneof![
            sensitive_name().prop_map(|name| (name, true)),
            "[a-z_]{1,8}".prop_map(|name| {
                let sensitive = DEFAULT_SENSITIVE_PARAMS.contains(&name.as_str());
                (name, sensitive)
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Secrets are unique markers: none may appear in the output, and every pair
        /// that is not sensitive comes out as it went in.
        #[test]
        fn no_sensitive_value_gets_through(pairs in proptest::collection::vec(pair(), 0..8)) {
            let query: Vec<String> = pairs
                .iter()
                .enumerate()
                .map(|(index, (name, _))| format!("{name}=SECRET{index}x%3D=y"))
                .collect();
            let clean = Sanitizer::default().sanitize(&query.join("&"));
            let out: Vec<&str> = clean.split('&').collect();
            prop_assert_eq!(out.len(), pairs.len().max(1));
            for (index, (name, sensitive)) in pairs.iter().enumerate() {
                if *sensitive {
                    prop_assert!(!clean.contains(&format!("SECRET{index}x")), "{}", clean);
                    prop_assert_eq!(out[index], format!("{name}={REDACTED}"));
                } else {
                    prop_assert_eq!(out[index], &query[index]);
                }
            }
        }

        /// Whatever the input, the output has the same pairs (split on `&`) and names.
        #[test]
        fn arbitrary_input_keeps_its_shape(query in "[a-zA-Z0-9%+=&\\[\\]_.~-]{0,40}") {
            let clean = Sanitizer::default().sanitize(&query);
            let before: Vec<&str> = query.split('&').collect();
            let after: Vec<&str> = clean.split('&').collect();
            prop_assert_eq!(before.len(), after.len());
            for (old, new) in before.iter().zip(&after) {
                let name = |pair: &str| pair.split('=').next().map(str::to_owned);
                prop_assert_eq!(name(old), name(new));
            }
        }
    }
}
