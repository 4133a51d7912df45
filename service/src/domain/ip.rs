//! Client IPs become a SHA-256 of their canonical text; the raw text is never kept.

use std::net::IpAddr;

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

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
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
