//! `hash_ip`: the same hash the server stores, so a console can look up a known IP.

use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::export::to_hex;

/// The text given to [`hash_ip`] is not an IP address. Carries no copy of the input: raw
/// IPs must not end up in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an IP address")]
pub struct InvalidIp;

/// The `ip_hash` the server stores for `ip`: lower-case hex SHA-256 of its canonical text
/// (IPv4 dotted decimal; IPv4-mapped IPv6 as plain IPv4; other IPv6 compressed, lower
/// case). Empty input gives an empty hash, as the server stores for an absent IP.
///
/// ```
/// let hash = reqlog_client::hash_ip("::ffff:203.0.113.10")?;
/// assert_eq!(hash, reqlog_client::hash_ip("203.0.113.10")?);
/// assert_eq!(&hash[..12], "631f08140b24");
/// # Ok::<(), reqlog_client::InvalidIp>(())
/// ```
pub fn hash_ip(ip: &str) -> Result<String, InvalidIp> {
    if ip.is_empty() {
        return Ok(String::new());
    }
    // Mirrors the server's service/src/domain/ip.rs: same parse, same canonical form.
    let canonical = match ip.parse::<IpAddr>().map_err(|_| InvalidIp)? {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
    };
    Ok(to_hex(&Sha256::digest(canonical.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_address_hash_alike() {
        let plain = hash_ip("2001:db8::1").unwrap();
        for spelling in ["2001:DB8::1", "2001:0db8:0000:0000:0000:0000:0000:0001"] {
            assert_eq!(hash_ip(spelling).unwrap(), plain, "{spelling}");
        }
        assert_eq!(
            hash_ip("203.0.113.10").unwrap(),
            to_hex(&Sha256::digest(b"203.0.113.10"))
        );
    }

    #[test]
    fn empty_is_empty_and_garbage_is_refused() {
        assert_eq!(hash_ip("").unwrap(), "");
        for bad in ["not-an-ip", "300.1.1.1", " 1.2.3.4", "fe80::1%eth0"] {
            assert_eq!(hash_ip(bad), Err(InvalidIp), "{bad}");
        }
    }
}
