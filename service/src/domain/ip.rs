//! Client IPs become a SHA-256 (or, with a key, an HMAC-SHA256) of their canonical text;
//! the raw text is never kept.

use std::fmt;
use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Why an IP was refused. Deliberately carries no copy of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAnIp;

/// The canonical text of an IP: IPv4 dotted decimal; IPv4-mapped IPv6 as plain IPv4; other
/// IPv6 compressed and lower case (RFC 5952, which is how `Ipv6Addr` displays).
pub fn canonical_ip(raw: &str) -> Result<String, NotAnIp> {
    let ip: IpAddr = raw.parse().map_err(|_| NotAnIp)?;
    Ok(match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
    })
}

/// `ip_hash` as stored: lower-case hex SHA-256 of the canonical text; empty input gives "".
pub fn hash_ip(raw: &str) -> Result<String, NotAnIp> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    Ok(sha256_hex(canonical_ip(raw)?.as_bytes()))
}

/// The shortest `--ip-hash-key-file` key accepted, in bytes: HMAC-SHA256's own block of
/// security, so the key cannot be guessed faster than the addresses it protects.
pub const MIN_IP_HASH_KEY_BYTES: usize = 32;

/// How `ip_hash` is computed: plain SHA-256 (the default, which anyone can recompute and
/// so reverse for IPv4 by trying all 2^32 addresses), or HMAC-SHA256 under a server key.
#[derive(Clone, Default)]
pub enum IpHasher {
    /// `sha256(canonical ip)`.
    #[default]
    Plain,
    /// `hmac_sha256(key, canonical ip)`.
    Keyed(Vec<u8>),
}

// By hand: the key must never reach a log line.
impl fmt::Debug for IpHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain => f.write_str("IpHasher::Plain"),
            Self::Keyed(_) => f.write_str("IpHasher::Keyed(***)"),
        }
    }
}

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTooShort;

impl IpHasher {
    /// A keyed hasher; the key is the file's bytes with surrounding white space trimmed
    /// (so `openssl rand -hex 32 > key` works), at least [`MIN_IP_HASH_KEY_BYTES`] long.
    pub fn keyed(key: &[u8]) -> Result<Self, KeyTooShort> {
        let key = key.trim_ascii();
        if key.len() < MIN_IP_HASH_KEY_BYTES {
            return Err(KeyTooShort);
        }
        Ok(Self::Keyed(key.to_vec()))
    }

    /// `ip_hash` as the API shows it: lower-case hex of [`Self::digest`]; empty input gives "".
    pub fn hash(&self, raw: &str) -> Result<String, NotAnIp> {
        Ok(to_hex(&self.digest(raw)?))
    }

    /// `ip_hash` as stored: the 32 bytes of the digest (half the size of its hex); empty
    /// input gives no bytes.
    pub fn digest(&self, raw: &str) -> Result<Vec<u8>, NotAnIp> {
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        let canonical = canonical_ip(raw)?;
        Ok(match self {
            Self::Plain => Sha256::digest(canonical.as_bytes()).to_vec(),
            Self::Keyed(key) => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts keys of any length");
                mac.update(canonical.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
        })
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

/// The bytes an even number of hex digits (either case) spell; `None` for anything else.
pub fn from_hex(hex: &str) -> Option<Vec<u8>> {
    fn nibble(digit: u8) -> Option<u8> {
        char::from(digit)
            .to_digit(16)
            .and_then(|value| u8::try_from(value).ok())
    }
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// The lowest and highest 32-byte digest whose hex starts with `prefix` (the prefix padded
/// with 0s, then with fs): hex digits, at most 64 of them, which the filter's validation
/// guarantees.
pub fn hex_prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let pad = |digit: char| {
        let mut hex = prefix.to_owned();
        hex.extend(std::iter::repeat_n(
            digit,
            64usize.saturating_sub(prefix.len()),
        ));
        from_hex(&hex).unwrap_or_default()
    };
    (pad('0'), pad('f'))
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        let digest = IpHasher::Plain.digest("203.0.113.10").unwrap();
        assert_eq!(digest.len(), 32);
        assert_eq!(to_hex(&digest), sha256_hex(b"203.0.113.10"));
        assert_eq!(from_hex(&to_hex(&digest)), Some(digest));
        assert_eq!(from_hex("0aFf"), Some(vec![0x0a, 0xff]));
        assert_eq!(from_hex(""), Some(Vec::new()));
        for bad in ["a", "abc", "zz", "0x", "é0"] {
            assert_eq!(from_hex(bad), None, "{bad}");
        }
        assert_eq!(IpHasher::Plain.digest("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn an_ip_hash_prefix_is_the_range_of_the_digests_that_start_with_it() {
        let (low, high) = hex_prefix_range("ab1");
        assert_eq!(low.len(), 32);
        assert_eq!((low[0], low[1], low[31]), (0xab, 0x10, 0x00));
        assert_eq!((high[0], high[1], high[31]), (0xab, 0x1f, 0xff));
        let full = "0f".repeat(32);
        assert_eq!(hex_prefix_range(&full), (vec![0x0f; 32], vec![0x0f; 32]));
        // A digest's lower-case hex sorts as its bytes do, so the range is the prefix.
        let inside = from_hex(&format!("ab1{}", "9".repeat(61))).unwrap();
        let outside = from_hex(&format!("ab2{}", "0".repeat(61))).unwrap();
        assert!(low <= inside && inside <= high);
        assert!(outside > high);
    }

    #[test]
    fn ipv4_hash_is_sha256_of_the_dotted_text() {
        assert_eq!(
            hash_ip("203.0.113.10").unwrap(),
            sha256_hex(b"203.0.113.10")
        );
    }

    #[test]
    fn ipv6_spellings_share_one_canonical_form() {
        for spelling in [
            "2001:db8::1",
            "2001:DB8::1",
            "2001:0db8:0000:0000:0000:0000:0000:0001",
            "2001:db8:0:0::1",
        ] {
            assert_eq!(canonical_ip(spelling).unwrap(), "2001:db8::1", "{spelling}");
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_becomes_ipv4() {
        assert_eq!(canonical_ip("::ffff:203.0.113.10").unwrap(), "203.0.113.10");
        assert_eq!(canonical_ip("::FFFF:cb00:710a").unwrap(), "203.0.113.10");
        assert_eq!(
            hash_ip("::ffff:203.0.113.10").unwrap(),
            hash_ip("203.0.113.10").unwrap()
        );
    }

    #[test]
    fn keyed_hashes_are_hmac_of_the_canonical_text_and_differ_from_plain() {
        let key = [7u8; 32];
        let keyed = IpHasher::keyed(&key).unwrap();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        mac.update(b"2001:db8::1");
        let expected = to_hex(&mac.finalize().into_bytes());
        assert_eq!(keyed.hash("2001:DB8:0::1").unwrap(), expected);
        assert_ne!(
            keyed.hash("203.0.113.10").unwrap(),
            IpHasher::Plain.hash("203.0.113.10").unwrap()
        );
        assert_eq!(
            IpHasher::Plain.hash("203.0.113.10").unwrap(),
            hash_ip("203.0.113.10").unwrap()
        );
        assert_eq!(keyed.hash("").unwrap(), "");
        assert_eq!(keyed.hash("nope"), Err(NotAnIp));
    }

    #[test]
    fn short_keys_are_refused_and_keys_never_print() {
        assert_eq!(IpHasher::keyed(b"short\n").unwrap_err(), KeyTooShort);
        let hasher = IpHasher::keyed(&[b'k'; 40]).unwrap();
        assert!(!format!("{hasher:?}").contains("kkkk"));
    }

    #[test]
    fn empty_is_empty_and_garbage_is_refused() {
        assert_eq!(hash_ip("").unwrap(), "");
        for bad in [
            "not-an-ip",
            "203.0.113",
            "300.1.1.1",
            " 1.2.3.4",
            "fe80::1%eth0",
        ] {
            assert_eq!(hash_ip(bad), Err(NotAnIp), "{bad}");
        }
    }
}

#[cfg(test)]
mod properties {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    /// Every way to write one IPv6 address: full, compressed, upper or lower case.
    fn spellings(v6: Ipv6Addr) -> Vec<String> {
        let full = v6
            .segments()
            .iter()
            .map(|segment| format!("{segment:04x}"))
            .collect::<Vec<_>>()
            .join(":");
        let short = v6.to_string();
        vec![
            full.to_ascii_uppercase(),
            short.to_ascii_uppercase(),
            full,
            short,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn canonical_form_is_a_fixed_point(raw in prop_oneof![
            any::<Ipv4Addr>().prop_map(|ip| ip.to_string()),
            any::<Ipv6Addr>().prop_map(|ip| ip.to_string()),
            "[0-9a-fA-F:.]{0,20}",
        ]) {
            if let Ok(canonical) = canonical_ip(&raw) {
                prop_assert_eq!(canonical_ip(&canonical), Ok(canonical.clone()));
                prop_assert_eq!(hash_ip(&raw), hash_ip(&canonical));
            }
        }

        #[test]
        fn every_spelling_of_an_ipv6_hashes_alike(v6 in any::<Ipv6Addr>()) {
            let expected = hash_ip(&v6.to_string()).expect("a displayed address parses");
            for spelling in spellings(v6) {
                prop_assert_eq!(hash_ip(&spelling), Ok(expected.clone()), "{}", spelling);
            }
        }

        #[test]
        fn an_ipv4_and_its_mapped_ipv6_are_one_address(v4 in any::<Ipv4Addr>()) {
            let expected = hash_ip(&v4.to_string()).expect("dotted decimal parses");
            for spelling in spellings(v4.to_ipv6_mapped()) {
                prop_assert_eq!(hash_ip(&spelling), Ok(expected.clone()), "{}", spelling);
            }
            prop_assert_eq!(canonical_ip(&format!("::ffff:{v4}")), Ok(v4.to_string()));
        }

        /// Distinct addresses never share a canonical form (the hash would merge them).
        #[test]
        fn distinct_addresses_stay_distinct(a in any::<Ipv6Addr>(), b in any::<Ipv6Addr>()) {
            let same_address = a == b
                || matches!((a.to_ipv4_mapped(), b.to_ipv4_mapped()), (Some(x), Some(y)) if x == y);
            let same_text = canonical_ip(&a.to_string()) == canonical_ip(&b.to_string());
            prop_assert_eq!(same_address, same_text);
        }
    }
}
